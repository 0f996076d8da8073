//! Records the commit the binary is built from, for `geolb_build_info`:
//! `GEOLB_COMMIT` from the environment if set (a build without git, as in
//! a container, can pass it), else `git rev-parse --short HEAD`, else
//! nothing (the binary says `unknown`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GEOLB_COMMIT");
    let commit = std::env::var("GEOLB_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // A new commit or a checkout moves HEAD or the branch it names.
            // Only files that exist: Cargo reruns for a missing one every time.
            let branch = git(&["symbolic-ref", "-q", "HEAD"]);
            let paths = ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref());
            for path in paths {
                if let Some(file) = git(&["rev-parse", "--git-path", path])
                    && std::path::Path::new(&file).exists()
                {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
            git(&["rev-parse", "--short", "HEAD"])
        });
    if let Some(commit) = commit {
        println!("cargo:rustc-env=GEOLB_COMMIT={commit}");
    }
}
