//! A timer that a connection or stream keeps for its whole life. A fresh
//! `tokio::time::timeout` per request inserts a timer into the runtime's
//! wheel and removes it again, twice a request (waiting for the client,
//! waiting for the backend), though such timeouts almost never fire.
//! This one stays armed: a later deadline only moves it when the earlier
//! one it was armed for passes, so a busy connection re-arms it about
//! once per timeout period instead of twice per request. Its `Sleep` is
//! allocated the first time something waits on it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};

/// The deadline passed before the work was done.
#[derive(Debug, PartialEq, Eq)]
pub struct TimedOut;

#[derive(Default)]
pub struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl LazyTimer {
    /// `work`, unless `deadline` comes first.
    pub async fn run<F: Future>(&mut self, deadline: Instant, work: F) -> Result<F::Output, TimedOut> {
        tokio::select! {
            biased;
            out = work => Ok(out),
            () = std::future::poll_fn(|cx| self.poll_until(cx, deadline)) => Err(TimedOut),
        }
    }

    /// Ready once `deadline` has passed; otherwise the waker is woken then
    /// (or once earlier, when a deadline armed before passes).
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.deadline() > deadline {
                sleep.as_mut().reset(deadline);
            }
            ready!(sleep.as_mut().poll(cx));
            // It fired at the deadline it was armed for: that is this one,
            // or an earlier one given before (then wait on, no clock read).
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn the_work_wins_before_its_deadline_and_the_deadline_after() {
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        assert_eq!(timer.run(start + 5 * S, async { 7 }).await, Ok(7));
        let slow = tokio::time::sleep(10 * S);
        assert_eq!(timer.run(start + 5 * S, slow).await, Err(TimedOut));
        assert_eq!(Instant::now(), start + 5 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_though_the_timer_was_armed_earlier() {
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        // Armed for 5 s, the work done at once.
        assert_eq!(timer.run(start + 5 * S, async {}).await, Ok(()));
        // The next wait may last until 9 s: the timer, still armed for
        // 5 s, fires there and must wait on rather than time out.
        let work = tokio::time::sleep_until(start + 8 * S);
        assert_eq!(timer.run(start + 9 * S, work).await, Ok(()));
        assert_eq!(Instant::now(), start + 8 * S);
        assert_eq!(
            timer.run(start + 12 * S, std::future::pending::<()>()).await,
            Err(TimedOut)
        );
        assert_eq!(Instant::now(), start + 12 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_armed_one_is_kept() {
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        assert_eq!(timer.run(start + 60 * S, async {}).await, Ok(()));
        assert_eq!(
            timer.run(start + 2 * S, std::future::pending::<()>()).await,
            Err(TimedOut)
        );
        assert_eq!(Instant::now(), start + 2 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_past_times_out_at_once() {
        let mut timer = LazyTimer::default();
        let start = Instant::now();
        tokio::time::advance(3 * S).await;
        assert_eq!(timer.run(start + S, std::future::pending::<()>()).await, Err(TimedOut));
        assert_eq!(Instant::now(), start + 3 * S);
    }
}
