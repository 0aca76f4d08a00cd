//! Records the git commit busbench is built from, and whether tracked files had uncommitted
//! changes, for `--version` and the reports.

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    if let Some(commit) = commit {
        println!("cargo:rustc-env=BUSBENCH_GIT_COMMIT={commit}");
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|text| !text.trim().is_empty());
        println!("cargo:rustc-env=BUSBENCH_GIT_DIRTY={dirty}");
    }
    for path in [
        ".git/HEAD",
        ".git/refs/heads",
        "src",
        "Cargo.toml",
        "README.md",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
