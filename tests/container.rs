//! The container image, checked without a container engine: the
//! Dockerfile is read as text and held against the repository, the config
//! it ships is laid out in a directory as it will be in the image and
//! passes `geolb check`, and its HEALTHCHECK command runs against a real
//! daemon.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use geolb::config::Config;
use support::{Geolb, bounded};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One instruction: continuation lines joined, comment lines skipped.
#[derive(Debug)]
struct Instruction {
    /// 0 for the first `FROM` and what follows it, 1 for the second...
    stage: usize,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("read the Dockerfile");
    let mut out: Vec<Instruction> = Vec::new();
    let mut pending = String::new();
    let mut stage = None::<usize>;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let whole = std::mem::take(&mut pending);
                let (keyword, args) = whole
                    .split_once(char::is_whitespace)
                    .unwrap_or((&whole, ""));
                let keyword = keyword.to_ascii_uppercase();
                if keyword == "FROM" {
                    stage = Some(stage.map_or(0, |s| s + 1));
                }
                out.push(Instruction {
                    stage: stage.expect("the Dockerfile starts with FROM"),
                    keyword,
                    args: args.trim().to_owned(),
                });
            }
        }
    }
    assert!(
        pending.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

fn all<'a>(instructions: &'a [Instruction], keyword: &str) -> Vec<&'a Instruction> {
    instructions
        .iter()
        .filter(|i| i.keyword == keyword)
        .collect()
}

/// The exec form of an instruction (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not a JSON array ({e}): {args}"))
}

/// A `COPY`: its `--from` stage, if any, its sources and destination.
struct Copy {
    stage: usize,
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
}

fn copies(instructions: &[Instruction]) -> Vec<Copy> {
    all(instructions, "COPY")
        .into_iter()
        .map(|i| {
            let mut from = None;
            let mut paths = Vec::new();
            for word in i.args.split_whitespace() {
                match word.strip_prefix("--") {
                    Some(flag) => {
                        if let Some(stage) = flag.strip_prefix("from=") {
                            from = Some(stage.to_owned());
                        }
                    }
                    None => paths.push(word.to_owned()),
                }
            }
            assert!(
                paths.len() >= 2 && !i.args.starts_with('['),
                "COPY {}: expected `COPY SOURCE... DEST`",
                i.args
            );
            let dest = paths.pop().unwrap();
            Copy {
                stage: i.stage,
                from,
                sources: paths,
                dest,
            }
        })
        .collect()
}

fn final_stage(instructions: &[Instruction]) -> usize {
    instructions.last().expect("instructions").stage
}

#[test]
fn every_copy_source_exists_in_the_repository() {
    let instructions = dockerfile();
    let stages: Vec<String> = all(&instructions, "FROM")
        .iter()
        .filter_map(|i| {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let at = words.iter().position(|w| w.eq_ignore_ascii_case("as"))?;
            words.get(at + 1).map(|s| s.to_string())
        })
        .collect();
    let copies = copies(&instructions);
    assert!(!copies.is_empty());
    for copy in &copies {
        if let Some(stage) = &copy.from {
            assert!(stages.contains(stage), "COPY --from={stage}: no such stage");
            continue;
        }
        for source in &copy.sources {
            assert!(
                !source.contains(['*', '?', '[']),
                "COPY {source}: name files explicitly, so this test can see them"
            );
            assert!(
                repo().join(source).exists(),
                "the Dockerfile copies {source}, which is not in the repository"
            );
        }
    }
}

/// The final image's files from the repository (`COPY` without `--from`),
/// copied under `root` at their paths in the image; returns those paths.
fn lay_out(instructions: &[Instruction], root: &Path) -> BTreeSet<String> {
    fn place(from: &Path, to: &Path, image_path: &str, placed: &mut BTreeSet<String>) {
        if from.is_dir() {
            for entry in std::fs::read_dir(from).unwrap() {
                let name = entry.unwrap().file_name();
                let name = name.to_str().unwrap();
                place(
                    &from.join(name),
                    &to.join(name),
                    &format!("{}/{name}", image_path.trim_end_matches('/')),
                    placed,
                );
            }
        } else {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            placed.insert(image_path.to_owned());
        }
    }
    let last = final_stage(instructions);
    let mut placed = BTreeSet::new();
    for copy in copies(instructions) {
        if copy.stage != last || copy.from.is_some() {
            continue;
        }
        assert!(
            copy.dest.starts_with('/'),
            "COPY ... {}: use absolute paths in the final stage",
            copy.dest
        );
        let into_dir = copy.dest.ends_with('/') || copy.sources.len() > 1;
        for source in &copy.sources {
            let from = repo().join(source);
            let dest = if into_dir && from.is_file() {
                let name = from.file_name().unwrap().to_str().unwrap();
                format!("{}/{name}", copy.dest.trim_end_matches('/'))
            } else {
                copy.dest.clone()
            };
            let to = root.join(dest.trim_start_matches('/'));
            place(&from, &to, &dest, &mut placed);
        }
    }
    placed
}

/// The image laid out under a temporary directory, with the config the
/// ENTRYPOINT runs rewritten so that each file of the image it names is
/// named at its place under that directory.
struct Image {
    root: tempfile::TempDir,
    files: BTreeSet<String>,
    config: PathBuf,
}

fn image(instructions: &[Instruction]) -> Image {
    let root = tempfile::tempdir().unwrap();
    let files = lay_out(instructions, root.path());
    let entrypoint = exec_form(
        &all(instructions, "ENTRYPOINT")
            .last()
            .expect("ENTRYPOINT")
            .args,
    );
    assert_eq!(
        entrypoint[..3],
        ["geolb", "run", "--config"],
        "{entrypoint:?}"
    );
    let in_image = &entrypoint[3];
    assert!(
        files.contains(in_image),
        "the ENTRYPOINT runs {in_image}, which no COPY puts in the image (it has {files:?})"
    );
    let config = root.path().join(in_image.trim_start_matches('/'));
    let mut text = std::fs::read_to_string(&config).unwrap();
    for file in &files {
        let here = root.path().join(file.trim_start_matches('/'));
        text = text.replace(&format!("\"{file}\""), &format!("\"{}\"", here.display()));
    }
    std::fs::write(&config, text).unwrap();
    Image {
        root,
        files,
        config,
    }
}

fn check(config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_geolb"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn the_shipped_config_passes_check_laid_out_as_in_the_image() {
    let instructions = dockerfile();
    let image = image(&instructions);
    let out = check(&image.config);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It ships the GeoIP database with the notice its license asks for.
    let databases: Vec<&String> = image
        .files
        .iter()
        .filter(|f| f.ends_with(".mmdb"))
        .collect();
    for db in databases {
        let notice = Path::new(db).with_file_name("README.md");
        let text =
            std::fs::read_to_string(image.root.path().join(notice.strip_prefix("/").unwrap()))
                .unwrap_or_else(|_| {
                    panic!("{db} is shipped without its README.md (license notice)")
                });
        assert!(
            text.contains("## License") && text.contains("MaxMind"),
            "{}",
            notice.display()
        );
    }
}

/// Without the files the image would have, the config does not pass: the
/// test above exercises the layout, not a config that names nothing.
#[test]
fn the_shipped_config_fails_check_without_the_files_the_image_copies() {
    let instructions = dockerfile();
    let image = image(&instructions);
    let databases: Vec<&String> = image
        .files
        .iter()
        .filter(|f| f.ends_with(".mmdb"))
        .collect();
    assert!(!databases.is_empty(), "the image ships no GeoIP database");
    for db in databases {
        std::fs::remove_file(image.root.path().join(db.trim_start_matches('/'))).unwrap();
    }
    let out = check(&image.config);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("geoip.database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn shipped_config(instructions: &[Instruction]) -> Config {
    let image = image(instructions);
    geolb::config::load(&image.config).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn expose_covers_every_port_the_shipped_config_binds() {
    let instructions = dockerfile();
    let config = shipped_config(&instructions);
    let mut bound = BTreeSet::new();
    if let Some(admin) = &config.admin {
        bound.insert(format!("{}/tcp", admin.listen.port()));
    }
    for addr in config.dns.iter().flat_map(|d| &d.listen) {
        bound.insert(format!("{}/udp", addr.port()));
        bound.insert(format!("{}/tcp", addr.port()));
    }
    for listener in &config.listeners {
        bound.insert(format!("{}/tcp", listener.bind.port()));
    }
    assert!(bound.len() >= 4, "{bound:?}");
    let exposed: BTreeSet<String> = all(&instructions, "EXPOSE")
        .iter()
        .flat_map(|i| i.args.split_whitespace())
        .map(|port| {
            if port.contains('/') {
                port.to_ascii_lowercase()
            } else {
                format!("{port}/tcp")
            }
        })
        .collect();
    let missing: Vec<&String> = bound.difference(&exposed).collect();
    assert!(missing.is_empty(), "bound but not EXPOSEd: {missing:?}");
    // Everything binds every address of the container, never loopback only.
    let loopback = config
        .listeners
        .iter()
        .map(|l| l.bind)
        .chain(config.admin.iter().map(|a| a.listen))
        .chain(config.dns.iter().flat_map(|d| d.listen.iter().copied()))
        .find(|a| a.ip().is_loopback());
    assert_eq!(loopback, None, "unreachable from outside the container");
}

#[test]
fn the_base_images_are_pinned() {
    let instructions = dockerfile();
    let froms = all(&instructions, "FROM");
    assert!(!froms.is_empty());
    let rust_version = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("rust-version in Cargo.toml");
    for from in froms {
        let image = from
            .args
            .split_whitespace()
            .find(|w| !w.starts_with("--"))
            .unwrap();
        let (name, digest) = image
            .split_once('@')
            .unwrap_or_else(|| panic!("FROM {image}: pin the digest too (@sha256:...)"));
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "FROM {image}: a sha256 digest has 64 hex digits"
        );
        let last = name.rsplit('/').next().unwrap();
        let (repository, tag) = last
            .split_once(':')
            .unwrap_or_else(|| panic!("FROM {image}: no tag (that is :latest)"));
        assert!(
            tag != "latest" && tag.contains(|c: char| c.is_ascii_digit()),
            "FROM {image}: the tag must name a version"
        );
        if repository == "rust" {
            // Older than the crate's rust-version, the build would fail.
            assert!(
                tag.starts_with(&format!("{rust_version}-"))
                    || tag.starts_with(&format!("{rust_version}.")),
                "FROM {image}: Cargo.toml's rust-version is {rust_version}"
            );
        }
    }
}

#[test]
fn the_image_runs_geolb_as_a_user_that_is_not_root() {
    let instructions = dockerfile();
    let last = final_stage(&instructions);
    let user = all(&instructions, "USER")
        .into_iter()
        .rfind(|i| i.stage == last)
        .expect("USER in the final stage");
    let name = user.args.split(':').next().unwrap();
    assert!(!matches!(name, "root" | "0"), "USER {}", user.args);
    let installed = copies(&instructions)
        .into_iter()
        .any(|c| c.stage == last && c.from.is_some() && c.dest == "/usr/local/bin/geolb");
    assert!(installed, "the ENTRYPOINT runs `geolb` from the PATH");
}

/// The HEALTHCHECK's command with the admin port it asks replaced.
fn healthcheck(instructions: &[Instruction], port: u16) -> Vec<String> {
    let args = &all(instructions, "HEALTHCHECK")
        .last()
        .expect("a HEALTHCHECK")
        .args;
    let (_, command) = args.split_once("CMD ").expect("HEALTHCHECK ... CMD [...]");
    let config = shipped_config(instructions);
    let admin = config.admin.expect("an [admin] listener").listen.port();
    let asks = format!("/dev/tcp/127.0.0.1/{admin}");
    let command = exec_form(command.trim());
    assert!(
        command.iter().any(|a| a.contains(&asks)),
        "the HEALTHCHECK does not ask the shipped config's admin port: {command:?}"
    );
    command
        .into_iter()
        .map(|a| a.replace(&asks, &format!("/dev/tcp/127.0.0.1/{port}")))
        .collect()
}

async fn run(command: &[String]) -> std::process::ExitStatus {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    bounded(Duration::from_secs(10), "the health check", child.wait())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_healthcheck_passes_on_a_running_daemon_and_fails_otherwise() {
    let instructions = dockerfile();
    let geolb = Geolb::start("[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let status = run(&healthcheck(&instructions, geolb.admin.port())).await;
    assert!(status.success(), "{status}");

    // An admin port that answers something other than 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown\n")
                .await;
        }
    });
    let status = run(&healthcheck(&instructions, port)).await;
    assert!(!status.success(), "a 503 passed");

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = run(&healthcheck(&instructions, closed)).await;
    assert!(!status.success(), "a closed port passed");
}
