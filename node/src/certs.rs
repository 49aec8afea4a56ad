//! `shoal certs`: a cluster CA, a certificate per node (its node id as the
//! DNS name, usable as both TLS server and client), and the gossip key.
//! Running it again reuses the CA and keeps existing files, so adding a
//! node is `shoal certs --dir DIR --nodes new-node`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use ring::rand::{SecureRandom, SystemRandom};
use shoal_proto::NodeId;

/// What a run created and what it found already there.
#[derive(Debug, Default)]
pub struct Outcome {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const GOSSIP_KEY: &str = "gossip.key";
const CA_YEARS: i32 = 10;
const NODE_YEARS: i32 = 5;

/// Node ids whose files would collide with the CA's or the gossip key.
const RESERVED: [&str; 2] = ["ca", "gossip"];

pub fn generate(dir: &Path, nodes: &[NodeId]) -> Result<Outcome> {
    for node in nodes {
        if RESERVED.contains(&node.as_str()) {
            bail!("node id {node:?} is reserved: its files would clash with {CA_CERT}/{CA_KEY} or {GOSSIP_KEY}");
        }
        // Node ids are DNS labels by construction; check against the name
        // rules the replication's mutual TLS will verify with.
        rustls_pki_types::ServerName::try_from(node.to_string())
            .with_context(|| format!("node id {node:?} is not a usable certificate name"))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Outcome::default();
    let year = current_year();
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let issuer = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let key = KeyPair::from_pem(&read(&ca_key)?).with_context(|| format!("reading {}", ca_key.display()))?;
            out.kept.extend([ca_cert.clone(), ca_key.clone()]);
            Issuer::from_ca_cert_pem(&read(&ca_cert)?, key)
                .with_context(|| format!("reading the CA certificate {}", ca_cert.display()))?
        }
        (false, false) => {
            let key = KeyPair::generate().context("generating the CA key")?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, "Shoal cluster CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
            params.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
            let cert = params.self_signed(&key).context("signing the CA certificate")?;
            write_file(&ca_cert, cert.pem().as_bytes(), 0o644)?;
            write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
            out.created.extend([ca_cert.clone(), ca_key.clone()]);
            Issuer::new(params, key)
        }
        _ => bail!(
            "{} has only one of {CA_CERT} and {CA_KEY}: restore the other, or remove both to make a new CA",
            dir.display()
        ),
    };
    for node in nodes {
        let (cert_path, key_path) = (dir.join(format!("{node}.pem")), dir.join(format!("{node}.key")));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                out.kept.extend([cert_path, key_path]);
                continue;
            }
            (false, false) => {}
            _ => bail!(
                "{} has only one of {node}.pem and {node}.key: restore the other, or remove both to make new ones",
                dir.display()
            ),
        }
        let key = KeyPair::generate().with_context(|| format!("generating the key of {node}"))?;
        let mut params = CertificateParams::new(vec![node.to_string()]).with_context(|| format!("node name {node}"))?;
        params.distinguished_name.push(DnType::CommonName, node.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + NODE_YEARS, 1, 1);
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing {node}'s certificate"))?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        out.created.extend([cert_path, key_path]);
    }
    let gossip = dir.join(GOSSIP_KEY);
    if gossip.exists() {
        out.kept.push(gossip);
    } else {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_file(&gossip, format!("{hex}\n").as_bytes(), 0o600)?;
        out.created.push(gossip);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `bytes` to a new file with `mode`, via a temporary name, so a
/// crash never leaves half a key behind and a key is never world-readable.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn current_year() -> i32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Close enough for validity bounds padded by a year either side.
    1970 + (secs / 31_556_952) as i32
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().filter_map(|n| NodeId::new(*n).ok()).collect()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
    }

    #[test]
    fn writes_a_ca_node_certificates_and_a_gossip_key() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = generate(dir.path(), &ids(&["lb1", "lb2"]))?;
        assert_eq!(out.created.len(), 2 + 4 + 1);
        for key in ["ca.key", "lb1.key", "lb2.key", "gossip.key"] {
            assert_eq!(mode(&dir.path().join(key)), 0o600, "{key}");
        }
        assert_eq!(mode(&dir.path().join("lb1.pem")), 0o644);
        // Each node certificate loads with its key...
        tls::load_certified_key(&dir.path().join("lb1.pem"), &dir.path().join("lb1.key"))?;
        // ...and the gossip key is usable.
        crate::cluster::GossipKey::load(&dir.path().join("gossip.key"))?;
        Ok(())
    }

    #[test]
    fn a_second_run_reuses_the_ca_and_keeps_existing_files() -> Result<()> {
        let dir = tempfile::tempdir()?;
        generate(dir.path(), &ids(&["lb1"]))?;
        let ca_before = fs::read(dir.path().join("ca.pem"))?;
        let lb1_before = fs::read(dir.path().join("lb1.pem"))?;
        let gossip_before = fs::read(dir.path().join("gossip.key"))?;
        let out = generate(dir.path(), &ids(&["lb1", "lb3"]))?;
        assert_eq!(
            out.created,
            vec![dir.path().join("lb3.pem"), dir.path().join("lb3.key")]
        );
        assert_eq!(fs::read(dir.path().join("ca.pem"))?, ca_before);
        assert_eq!(fs::read(dir.path().join("lb1.pem"))?, lb1_before);
        assert_eq!(fs::read(dir.path().join("gossip.key"))?, gossip_before);
        // lb3 is signed by the same CA: the chain verifies.
        verify_chain(dir.path(), "lb3")?;
        verify_chain(dir.path(), "lb1")?;
        Ok(())
    }

    #[test]
    fn reserved_names_and_half_pairs_are_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for reserved in ["ca", "gossip"] {
            let err = generate(dir.path(), &ids(&[reserved]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("is reserved"), "{err}");
        }
        generate(dir.path(), &ids(&["lb1"]))?;
        fs::remove_file(dir.path().join("lb1.key"))?;
        let before = fs::read(dir.path().join("lb1.pem"))?;
        let err = generate(dir.path(), &ids(&["lb1"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("only one of lb1.pem and lb1.key"), "{err}");
        assert_eq!(fs::read(dir.path().join("lb1.pem"))?, before, "nothing was overwritten");
        Ok(())
    }

    #[test]
    fn half_a_ca_is_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        generate(dir.path(), &[])?;
        fs::remove_file(dir.path().join("ca.key"))?;
        let err = generate(dir.path(), &ids(&["lb1"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("only one of ca.pem and ca.key"), "{err}");
        Ok(())
    }

    /// Verifies `node`'s certificate against the CA with rustls' verifier.
    fn verify_chain(dir: &Path, node: &str) -> Result<()> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(dir.join("ca.pem"))?)?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), tls::provider()).build()?;
        let leaf = CertificateDer::from_pem_file(dir.join(format!("{node}.pem")))?;
        let name = ServerName::try_from(node.to_string())?;
        verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())?;
        Ok(())
    }
}
