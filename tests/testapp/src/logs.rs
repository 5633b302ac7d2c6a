//! Log files for the log adapter's cluster test, written on the shared log volume when `LOG_DIR`
//! is set:
//!
//! - `access.log`: nginx combined access lines, `error.log`: nginx error lines, `app.log`: a
//!   logback-style line followed by a Java stack trace (`Caused by:`, `... N more`);
//! - `count.log`: `LOG_LINES` logfmt lines `seq=N` (default 0), `LOG_RATE` a second (default 100),
//!   so that a test can count every line across a restart of the adapter;
//! - with `LOG_BAD=1`: `garbage.log` (binary bytes), `huge.log` (one 10 MB line, then a short one),
//!   `deleted.log` (deleted while the adapter reads it) and `secret.log` (unreadable, mode 000).
//!
//! The stamps of the fixed lines are fixed too, with offsets, so a test knows their UTC form.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(bytes)
}

/// Starts the writer thread when `LOG_DIR` is set.
pub fn start() {
    let Some(dir) = std::env::var_os("LOG_DIR").map(PathBuf::from) else {
        return;
    };
    std::thread::spawn(move || {
        if let Err(error) = write_all(&dir) {
            eprintln!("testapp: writing logs in {}: {error}", dir.display());
        }
    });
}

fn write_all(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    append(
        &dir.join("access.log"),
        b"10.1.2.3 - alice [05/Dec/2026:23:59:58 +0100] \"GET /cart?id=7 HTTP/1.1\" 404 153 \"https://shop.example/\" \"Mozilla/5.0 (X11; Linux x86_64)\"\n",
    )?;
    append(
        &dir.join("error.log"),
        b"2026/12/05 22:59:59 [error] 29#29: *4 open() \"/usr/share/nginx/html/cart\" failed (2: No such file or directory), client: 10.1.2.3, server: shop, request: \"GET /cart?id=7 HTTP/1.1\", host: \"shop.example\"\n",
    )?;
    append(
        &dir.join("app.log"),
        b"2026-12-05 22:59:59.250 ERROR [main] com.example.Shop - Checkout failed\n\
java.lang.IllegalStateException: cart is empty\n\
\tat com.example.Shop.checkout(Shop.java:42)\n\
\tat com.example.Main.main(Main.java:7)\n\
Caused by: java.lang.NullPointerException: items\n\
\tat com.example.Cart.items(Cart.java:12)\n\
\t... 2 more\n",
    )?;
    if std::env::var("LOG_BAD").is_ok_and(|v| v == "1") {
        write_bad(dir)?;
    }
    let lines = env_number("LOG_LINES", 0);
    let rate = env_number("LOG_RATE", 100).max(1);
    let path = dir.join("count.log");
    for seq in 0..lines {
        append(
            &path,
            format!("level=info seq={seq:06} msg=\"counted line\"\n").as_bytes(),
        )?;
        std::thread::sleep(Duration::from_micros(1_000_000 / rate));
    }
    Ok(())
}

fn write_bad(dir: &Path) -> std::io::Result<()> {
    // Every byte value, NUL and invalid UTF-8 included, on a few lines.
    let mut garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    garbage.extend_from_slice(b"\n\xff\xfe\x00binary\xc3\x28\n");
    append(&dir.join("garbage.log"), &garbage)?;

    let mut huge = vec![b'x'; 10 << 20];
    huge.push(b'\n');
    huge.extend_from_slice(b"after the huge line\n");
    append(&dir.join("huge.log"), &huge)?;

    let secret = dir.join("secret.log");
    append(&secret, b"nobody may read this\n")?;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000))?;

    let deleted = dir.join("deleted.log");
    let mut text = String::new();
    for n in 0..20_000 {
        text.push_str(&format!("deleted file line {n}\n"));
    }
    append(&deleted, text.as_bytes())?;
    // The adapter looks for new files every second: give it time to open this one, then delete it
    // while more is still being written to the open file.
    std::thread::sleep(Duration::from_secs(3));
    let mut file = OpenOptions::new().append(true).open(&deleted)?;
    fs::remove_file(&deleted)?;
    file.write_all(b"written after the deletion\n")?;
    Ok(())
}
