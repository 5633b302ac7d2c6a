//! Writes the JSON Schema of every document of the contract into a directory:
//! `contract-schemas --dir contract/schemas`.

use std::{path::PathBuf, process::ExitCode};

use outrigger_contract::schema::documents;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--dir"), Some(dir), None) => PathBuf::from(dir),
        _ => {
            eprintln!("usage: contract-schemas --dir <directory>");
            return ExitCode::from(2);
        }
    };
    for document in documents() {
        let path = dir.join(document.file_name());
        let written = document
            .render()
            .map_err(|error| error.to_string())
            .and_then(|text| std::fs::write(&path, text).map_err(|error| error.to_string()));
        if let Err(error) = written {
            eprintln!("writing {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
