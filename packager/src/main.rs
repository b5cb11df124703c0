//! `slipway-pack`: the command line of the packager (SPEC §5).
//!
//! Exit codes: 0 done, 1 failed, 2 bad usage or configuration.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use slipway_formats::channel::Timestamp;
use slipway_formats::{PublicKey, ReleaseId, TrustedKeys, Version};
use slipway_pack::build::{build_release, BuildOptions};
use slipway_pack::bundle::{make_bundle, BundleOptions, BundleReport};
use slipway_pack::inspect::{diff_archives, inspect};
use slipway_pack::keys::{self, SecretKeyFile, SigningKey, DEFAULT_KEY_NAME};
use slipway_pack::repo::{self, IndexOptions, IndexUpdate, PublishOptions, Repo};
use slipway_pack::verify::{verify_archive, verify_repo};
use slipway_pack::PackError;

#[derive(Parser)]
#[command(
    name = "slipway-pack",
    version,
    about = "Builds, signs and publishes slipway releases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a minisign key pair: DIR/NAME.key (secret, 0600) and DIR/NAME.pub.
    Keygen {
        /// Where to write the key files.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Base name of the key files.
        #[arg(long, default_value = DEFAULT_KEY_NAME)]
        name: String,
        /// Write the secret key without a password.
        #[arg(long)]
        unencrypted: bool,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Build and sign a release archive into REPO_DIR/releases/.
    Build(BuildArgs),
    /// Add a release to a channel index and re-sign the index.
    Publish {
        #[command(flatten)]
        index: IndexArgs,
        /// Percent of hosts that take the release.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
        rollout: u8,
        /// Release notes shown to operators.
        #[arg(long)]
        notes: Option<String>,
        /// List only the newest N releases in the index (archives stay).
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Write deltas to the release from each of the newest K older
        /// releases of the channel, listed in the index (0: none).
        #[arg(long, value_name = "K", default_value_t = repo::DEFAULT_DELTAS)]
        deltas: usize,
        /// Release id (sha256:<hex>), bare hex, or archive path.
        release: String,
    },
    /// Write a signed delta archive that turns release FROM into release TO
    /// (REPO_DIR/deltas/<from>-<to>.tar.zst): the new manifest and only
    /// the files FROM does not have, compressed against FROM's manifest
    /// and its old versions of the changed files.
    Delta {
        /// The release repository holding both releases.
        #[arg(long, value_name = "REPO_DIR")]
        repo: PathBuf,
        /// The release the delta starts from (id or bare hex).
        #[arg(long, value_name = "ID")]
        from: String,
        /// The release the delta produces (id or bare hex).
        #[arg(long, value_name = "ID")]
        to: String,
        /// Secret key file (password from SLIPWAY_KEY_PASSWORD or a prompt).
        #[arg(long, value_name = "SECRET_KEY")]
        key: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a release yanked in a channel: hosts never install it again.
    Yank {
        #[command(flatten)]
        index: IndexArgs,
        /// Release id (sha256:<hex>), bare hex, or archive path.
        release: String,
    },
    /// Re-sign a channel index with a new expiry (run it on a schedule).
    Refresh {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Verify an archive, or every index, listed archive and listed delta of a repository.
    Verify {
        /// Trusted public key: a .pub file or the base64 key (repeatable).
        #[arg(long = "pubkey", value_name = "PUB", required = true)]
        pubkeys: Vec<String>,
        /// Verify the repository at REPO_DIR.
        #[arg(long, value_name = "REPO_DIR", conflicts_with = "archive")]
        repo: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The archive to verify (its .minisig beside it).
        #[arg(required_unless_present = "repo")]
        archive: Option<PathBuf>,
    },
    /// Show what a release archive holds.
    Inspect {
        archive: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the file-level differences between two release archives.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print the difference as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an offline bundle of a channel for an air-gapped host: its
    /// index, the releases a host would pick, their signatures, the deltas
    /// the index lists to them, the public key, a README and SHA256SUMS
    /// (signed with --key).
    Bundle {
        /// The release repository.
        #[arg(long, value_name = "REPO_DIR")]
        repo: PathBuf,
        /// The channel.
        #[arg(long)]
        channel: String,
        /// The bundle directory to create (with --tar: a .tar file).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Write one tar file instead of a directory.
        #[arg(long)]
        tar: bool,
        /// Every release that is not yanked, not only the newest.
        #[arg(long)]
        all: bool,
        /// Leave out the deltas (only the full archives go in; a smaller
        /// bundle, and hosts older than deltas accept it).
        #[arg(long)]
        no_deltas: bool,
        /// Sign SHA256SUMS with this secret key (password from
        /// SLIPWAY_KEY_PASSWORD or a prompt).
        #[arg(long, value_name = "SECRET_KEY")]
        key: Option<PathBuf>,
        /// Public key the index must verify with: a .pub file or the base64
        /// key (repeatable; default: the repository's keys/).
        #[arg(long = "pubkey", value_name = "PUB")]
        pubkeys: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Introduce a new release key: a statement signed by the current key
    /// (keys/rotation-<NEWKEYID>.json), so hosts trust the new key on their
    /// next poll.
    RotateKey {
        /// The release repository.
        #[arg(long, value_name = "REPO_DIR")]
        repo: PathBuf,
        /// The current (trusted) secret key that signs the statement.
        #[arg(long, value_name = "OLD_SECRET")]
        key: PathBuf,
        /// The new public key: a .pub file or the base64 key.
        #[arg(long, value_name = "NEW_PUB")]
        new_pubkey: String,
        /// The app (default: the app of the repository's channels).
        #[arg(long)]
        app: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (slipway-pack.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// The source tree (app/ and schema/, or the whole directory as app/).
    source_dir: PathBuf,
    /// App name (else `app` in slipway.toml).
    #[arg(long)]
    app: Option<String>,
    /// Release version X.Y.Z (else from --tag).
    #[arg(long)]
    version: Option<Version>,
    /// Secret key file (password from SLIPWAY_KEY_PASSWORD or a prompt).
    #[arg(long, value_name = "SECRET_KEY")]
    key: PathBuf,
    /// The release repository to write into.
    #[arg(long, value_name = "REPO_DIR")]
    out: PathBuf,
    /// Schema directory, instead of SOURCE_DIR/schema.
    #[arg(long, value_name = "DIR")]
    schema: Option<PathBuf>,
    /// Channel (else `channel` in slipway.toml, else "stable").
    #[arg(long)]
    channel: Option<String>,
    /// Exclude glob (repeatable), added to slipway.toml's and .slipwayignore's.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Schema version (overrides slipway.toml).
    #[arg(long)]
    schema_version: Option<u32>,
    /// Oldest compatible data schema (overrides slipway.toml).
    #[arg(long)]
    schema_min_compatible: Option<u32>,
    /// The mtime of every entry and the manifest's `created`.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "N")]
    source_date_epoch: Option<u64>,
    /// Git commit recorded in the manifest.
    #[arg(long, value_name = "SHA")]
    commit: Option<String>,
    /// Git tag vX.Y.Z recorded in the manifest (gives the version).
    #[arg(long, value_name = "vX.Y.Z")]
    tag: Option<String>,
    /// zstd worker threads (default min(cores + 1, 4)); the output is the same.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    zstd_workers: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct IndexArgs {
    /// The release repository.
    #[arg(long, value_name = "REPO_DIR")]
    repo: PathBuf,
    /// The channel.
    #[arg(long)]
    channel: String,
    /// Secret key file (password from SLIPWAY_KEY_PASSWORD or a prompt).
    #[arg(long, value_name = "SECRET_KEY")]
    key: PathBuf,
    /// How long the signed index stays valid (e.g. 30d, 12h).
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    expires_in: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl IndexArgs {
    fn options(&self) -> Result<IndexOptions> {
        let mut opts = IndexOptions::new(&self.channel);
        opts.expires_in = repo::parse_duration(&self.expires_in)?;
        Ok(opts)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            let code = err
                .chain()
                .find_map(|e| e.downcast_ref::<PackError>())
                .map_or(1, PackError::exit_code);
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keygen {
            out_dir,
            name,
            unencrypted,
            force,
        } => {
            let password = if unencrypted {
                None
            } else {
                Some(keys::password_from_env_or_prompt(
                    "the new secret key",
                    true,
                )?)
            };
            let generated = keys::generate_key(&out_dir, &name, password.as_deref(), force)?;
            slipway_fs::outln!("secret key: {}", generated.secret_path.display());
            slipway_fs::outln!("public key: {}", generated.public_path.display());
            slipway_fs::outln!("key id:     {}", generated.public.id());
            slipway_fs::outln!(
                "public key (for hosts' public_keys): {}",
                generated.public.to_base64()
            );
        }
        Command::Build(args) => build(args)?,
        Command::Publish {
            index,
            rollout,
            notes,
            keep,
            deltas,
            release,
        } => {
            let key = load_key(&index.key)?;
            let opts = PublishOptions {
                index: index.options()?,
                rollout,
                notes,
                keep,
                deltas,
            };
            let repo = Repo::new(&index.repo);
            let update = repo::publish(&repo, &key, &release, &opts)
                .with_context(|| format!("publishing {release} to channel {:?}", index.channel))?;
            report_update("published", &update, index.json)?;
        }
        Command::Delta {
            repo: repo_dir,
            from,
            to,
            key,
            json,
        } => {
            let key = load_key(&key)?;
            let from = ReleaseId::parse_loose(&from)?;
            let to = ReleaseId::parse_loose(&to)?;
            let built = slipway_pack::delta::make_delta(&Repo::new(&repo_dir), &key, &from, &to)
                .with_context(|| format!("making the delta from {from} to {to}"))?;
            if json {
                slipway_fs::outln!("{}", serde_json::to_string_pretty(&built)?);
            } else {
                slipway_fs::outln!(
                    "wrote {} ({} bytes: {} for the manifest, {} for the files against {} bytes of the base; {} for the full archive; {} files carried, {} left out)",
                    built.path.display(),
                    built.size,
                    built.manifest_frame,
                    built.files_frame,
                    built.reference,
                    built.full_size,
                    built.files,
                    built.omitted
                );
            }
        }
        Command::Yank { index, release } => {
            let key = load_key(&index.key)?;
            let repo = Repo::new(&index.repo);
            let id = match ReleaseId::parse_loose(&release) {
                Ok(id) => id,
                Err(_) => repo::archive_id_from_name(Path::new(&release))?,
            };
            let update = repo::yank(&repo, &key, &id, &index.options()?)
                .with_context(|| format!("yanking {id} from channel {:?}", index.channel))?;
            report_update(
                if update.changed {
                    "yanked"
                } else {
                    "already yanked"
                },
                &update,
                index.json,
            )?;
        }
        Command::Refresh { index } => {
            let key = load_key(&index.key)?;
            let update = repo::refresh(&Repo::new(&index.repo), &key, &index.options()?)?;
            report_update("refreshed", &update, index.json)?;
        }
        Command::Verify {
            pubkeys,
            repo,
            json,
            archive,
        } => return verify(&pubkeys, repo, archive, json),
        Command::Inspect { archive, json } => {
            let info = inspect(&archive)?;
            if json {
                slipway_fs::out!("{}", String::from_utf8_lossy(&info.manifest.to_bytes()));
            } else {
                print_inspection(&info);
            }
        }
        Command::RotateKey {
            repo,
            key,
            new_pubkey,
            app,
            json,
        } => rotate_key(&repo, &key, &new_pubkey, app.as_deref(), json)?,
        Command::Diff { old, new, json } => {
            let diff = diff_archives(&old, &new)?;
            if json {
                slipway_fs::outln!("{}", serde_json::to_string_pretty(&diff)?);
            } else {
                print_diff(&diff);
            }
        }
        Command::Bundle {
            repo,
            channel,
            out,
            tar,
            all,
            no_deltas,
            key,
            pubkeys,
            json,
        } => {
            let key = key.as_deref().map(load_key).transpose()?;
            let mut opts = BundleOptions::new(&channel, &out);
            opts.tar = tar;
            opts.all = all;
            opts.deltas = !no_deltas;
            if !pubkeys.is_empty() {
                opts.trusted = Some(parse_pubkeys(&pubkeys)?);
            }
            let report = make_bundle(&Repo::new(&repo), &opts, key.as_ref())
                .with_context(|| format!("bundling channel {channel:?} of {}", repo.display()))?;
            print_bundle(&report, json)?;
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "slipway-pack", &mut std::io::stdout());
        }
        Command::Man { out } => {
            for path in write_man_pages(Cli::command(), &out)? {
                slipway_fs::outln!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_bundle(r: &BundleReport, json: bool) -> Result<()> {
    if json {
        slipway_fs::outln!("{}", serde_json::to_string_pretty(r)?);
    } else {
        slipway_fs::outln!(
            "bundle {} ({} {}, index version {}, expires {}): {} release(s), {} files{}",
            r.path.display(),
            r.app,
            r.channel,
            r.index_version,
            r.expires,
            r.releases.len(),
            r.files,
            if r.signed { ", SHA256SUMS signed" } else { "" }
        );
        for rel in &r.releases {
            slipway_fs::outln!("  {} {}", rel.version, rel.id);
        }
        for d in &r.deltas {
            slipway_fs::outln!(
                "  delta {} -> {}: {} bytes (full archive {} bytes)",
                d.from_version.as_deref().unwrap_or(&d.from),
                d.to_version,
                d.size,
                d.full_size
            );
        }
        slipway_fs::outln!("signing key: {} {}", r.key_id, r.public_key);
        if let Some(sha) = &r.tar_sha256 {
            slipway_fs::outln!("sha256 of the tar: {sha}");
        }
        let target = if r.tar {
            format!("/media/usb/{}.tar", r.name)
        } else {
            format!("/media/usb/{}", r.name)
        };
        slipway_fs::outln!("on the host: slipway install {target} && slipway status");
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// Writes `<name>.1` for `cmd` and `<name>-<sub>.1` for each visible
/// subcommand into `dir`; returns the paths written.
fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = cmd.get_name().to_string();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        pages.push((sub_name.clone(), sub.clone().name(sub_name)));
    }
    let mut written = Vec::new();
    for (page, cmd) in pages {
        let path = dir.join(format!("{page}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut bytes)?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn rotate_key(
    repo: &Path,
    key: &Path,
    new_pubkey: &str,
    app: Option<&str>,
    json: bool,
) -> Result<()> {
    let key = load_key(key)?;
    let new_key = parse_pubkeys(&[new_pubkey.to_string()])?
        .keys()
        .first()
        .cloned()
        .context("--new-pubkey names no key")?;
    let written = slipway_pack::rotate::rotate_key(&Repo::new(repo), &key, &new_key, app, None)
        .with_context(|| format!("introducing key {} in {}", new_key.id(), repo.display()))?;
    if json {
        let value = serde_json::json!({
            "statement": written.path,
            "signature": written.signature,
            "app": written.statement.app,
            "new_key": written.statement.new_key_id,
            "introduced_by": written.statement.introduced_by,
            "created": written.statement.created,
        });
        slipway_fs::outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        slipway_fs::outln!(
            "wrote {} (signed by key {}): hosts that trust {} trust key {} for {} from their next poll; sign releases and indexes with the new key from now on",
            written.path.display(),
            written.statement.introduced_by,
            written.statement.introduced_by,
            written.statement.new_key_id,
            written.statement.app
        );
    }
    Ok(())
}

fn load_key(path: &Path) -> Result<SigningKey> {
    let file = SecretKeyFile::read(path)?;
    let password = if file.is_encrypted() {
        Some(keys::password_from_env_or_prompt(
            &format!("secret key {}", path.display()),
            false,
        )?)
    } else {
        None
    };
    Ok(file.unlock(password.as_deref())?)
}

fn build(args: BuildArgs) -> Result<()> {
    let key = load_key(&args.key)?;
    let mut opts = BuildOptions::new(&args.source_dir, &args.out);
    opts.app = args.app;
    opts.version = args.version;
    opts.tag = args.tag;
    opts.commit = args.commit;
    opts.channel = args.channel;
    opts.schema_dir = args.schema;
    opts.schema_version = args.schema_version;
    opts.schema_min_compatible = args.schema_min_compatible;
    opts.excludes = args.exclude;
    opts.source_date_epoch = args.source_date_epoch.unwrap_or(0);
    opts.zstd_workers = args.zstd_workers;
    opts.progress = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let built = build_release(&opts, &key)
        .with_context(|| format!("building {}", args.source_dir.display()))?;
    if args.json {
        slipway_fs::outln!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        slipway_fs::outln!("{}", built.id);
        if std::io::stderr().is_terminal() {
            eprintln!(
                "{} {} ({}) : {} files, {} bytes -> {} ({} bytes) in {:.1?}",
                built.app,
                built.version,
                built.channel,
                built.files,
                built.bytes,
                built.archive.display(),
                built.size,
                started.elapsed()
            );
        }
    }
    Ok(())
}

fn report_update(what: &str, update: &IndexUpdate, json: bool) -> Result<()> {
    if json {
        let value = serde_json::json!({
            "result": what,
            "changed": update.changed,
            "index": update.path,
            "channel": update.index.channel,
            "app": update.index.app,
            "version": update.index.version,
            "expires": update.index.expires,
            "release": update.release,
            "deltas": update.deltas,
            "delta_notes": update.delta_notes,
        });
        slipway_fs::outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match &update.release {
        Some(r) => slipway_fs::outln!(
            "{what} {} {} ({}) in channel {:?} ({}): index version {}, expires {}",
            update.index.app,
            r.version,
            r.id,
            update.index.channel,
            update.path.display(),
            update.index.version,
            update.index.expires
        ),
        None => slipway_fs::outln!(
            "{what} {}: index version {}, expires {}",
            update.path.display(),
            update.index.version,
            update.index.expires
        ),
    }
    for d in &update.deltas {
        slipway_fs::outln!(
            "delta from {}: {} bytes ({} for the full archive)",
            d.from.short(),
            d.size,
            d.full_size
        );
    }
    for note in &update.delta_notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

fn parse_pubkeys(args: &[String]) -> Result<TrustedKeys> {
    let mut keys = Vec::new();
    for arg in args {
        let path = Path::new(arg);
        let key = if path.is_file() {
            let text = slipway_fs::read_text_capped(path, 16 * 1024)
                .with_context(|| format!("reading public key {arg}"))?;
            PublicKey::parse(&text).with_context(|| format!("public key file {arg}"))?
        } else {
            PublicKey::from_base64(arg).map_err(|e| {
                PackError::Usage(format!(
                    "--pubkey {arg:?} is neither a readable .pub file nor a base64 key: {e}"
                ))
            })?
        };
        keys.push(key);
    }
    Ok(TrustedKeys::new(keys))
}

fn verify(
    pubkeys: &[String],
    repo: Option<PathBuf>,
    archive: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let keys = parse_pubkeys(pubkeys)?;
    if let Some(repo_dir) = repo {
        let now = Timestamp(time::OffsetDateTime::now_utc());
        let report = verify_repo(&Repo::new(&repo_dir), &keys, now)?;
        if json {
            slipway_fs::outln!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for c in &report.channels {
                slipway_fs::outln!(
                    "ok  channel {} ({}): index version {}, {} releases, signed by {}, expires {}",
                    c.channel,
                    c.app,
                    c.version,
                    c.releases,
                    c.key_id,
                    c.expires
                );
            }
            for a in &report.archives {
                slipway_fs::outln!(
                    "ok  {} {} {} ({} entries, {} bytes), signed by {}",
                    a.manifest.app,
                    a.manifest.version,
                    a.id,
                    a.manifest.files.len(),
                    a.size,
                    a.key_id
                );
            }
            for d in &report.deltas {
                slipway_fs::outln!("ok  delta {d}");
            }
            for p in &report.problems {
                eprintln!("error: {p}");
            }
        }
        return Ok(if report.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let Some(archive) = archive else {
        return Err(PackError::Usage("pass an ARCHIVE or --repo REPO_DIR".into()).into());
    };
    let verified = verify_archive(&archive, &keys)?;
    if json {
        let value = serde_json::json!({
            "id": verified.id,
            "path": verified.path,
            "size": verified.size,
            "key_id": verified.key_id.to_string(),
            "app": verified.manifest.app,
            "version": verified.manifest.version,
            "channel": verified.manifest.channel,
            "entries": verified.manifest.files.len(),
        });
        slipway_fs::outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        slipway_fs::outln!(
            "ok  {} {} ({}) {}: sha256 matches the name, signature by {} verified, {} entries match the manifest",
            verified.manifest.app,
            verified.manifest.version,
            verified.manifest.channel,
            verified.id,
            verified.key_id,
            verified.manifest.files.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_inspection(info: &slipway_pack::inspect::Inspection) {
    let m = &info.manifest;
    let (files, dirs, links) = info.counts();
    slipway_fs::outln!("id:        {}", info.id);
    slipway_fs::outln!("archive:   {} ({} bytes)", info.path.display(), info.size);
    slipway_fs::outln!("app:       {}", m.app);
    slipway_fs::outln!("version:   {}", m.version);
    slipway_fs::outln!("channel:   {}", m.channel);
    slipway_fs::outln!("created:   {}", m.created);
    if let Some(src) = &m.source {
        slipway_fs::outln!(
            "source:    commit {} tag {}",
            src.commit.as_deref().unwrap_or("-"),
            src.tag.as_deref().unwrap_or("-")
        );
    }
    slipway_fs::outln!(
        "schema:    version {} (reads data from {})",
        m.schema_version,
        m.schema_min_compatible
    );
    let hook = |h: &Option<Vec<String>>| h.as_ref().map_or("-".to_string(), |a| a.join(" "));
    slipway_fs::outln!("hooks:     check: {}", hook(&m.hooks.check));
    slipway_fs::outln!("           migrate: {}", hook(&m.hooks.migrate));
    if !m.runtime_paths.is_empty() {
        slipway_fs::outln!("runtime:   {}", m.runtime_paths.join(" "));
    }
    slipway_fs::outln!(
        "entries:   {} files, {} directories, {} symlinks",
        files,
        dirs,
        links
    );
    slipway_fs::outln!("size:      {} bytes unpacked", m.total_size());
    match &info.signature {
        Some((key, comment)) => {
            slipway_fs::outln!(
                "signature: key {key}, comment {comment:?} (not verified: use verify)"
            )
        }
        None => slipway_fs::outln!("signature: none beside the archive"),
    }
}

fn print_diff(d: &slipway_pack::inspect::ManifestDiff) {
    slipway_fs::out!("{d}");
}
