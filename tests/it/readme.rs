//! The README's quickstart, run as a new user pastes it: every block the README marks
//! as tested, in order, through bash and curl against a fresh server. A command that
//! answers an error status fails the test with the answer.

use crate::support::Server;

const MARKER: &str = "<!-- tests/it/readme.rs runs this block, in order, against a fresh server -->";

/// The shell blocks that follow the marker, in README order.
fn tested_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = readme;
    while let Some(at) = rest.find(MARKER) {
        let after = rest[at + MARKER.len()..].trim_start();
        let body = after.strip_prefix("```sh\n").expect("the marker is followed by a ```sh block");
        let end = body.find("\n```").expect("the block is closed");
        blocks.push(body[..end].to_string());
        rest = &body[end..];
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_works_as_written() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is needed to run the README's quickstart");
    }
    let readme = std::fs::read_to_string(format!("{}/../README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let blocks = tested_blocks(&readme);
    assert!(blocks.len() >= 2, "the README marks its quickstart blocks as tested");
    let s = Server::start().await;
    // The user's own server and key stand in for the ones the README names.
    let mut script = String::from("set -euo pipefail\ncurl() { command curl --fail-with-body --show-error \"$@\"; echo; }\n");
    for block in &blocks {
        for line in block.lines() {
            if line.starts_with("export LL=") {
                continue;
            }
            script.push_str(line);
            script.push('\n');
        }
    }
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("LL", format!("http://{}", s.addr))
        .env("KEY", &s.admin_key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the quickstart failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The `as_of` read of the latest commit answered CSV with the upserted row.
    assert!(stdout.contains("user_id,ts,clicks,ctr,embedding\n1,2026-03-01T00:00:00Z,30,"), "{stdout}");
}
