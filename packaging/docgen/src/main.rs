//! `enrollgate-docgen OUT_DIR DATE`: writes enrollgate's man pages and shell completions
//! under OUT_DIR (see the library's documentation for the layout), the pages dated DATE
//! (`YYYY-MM-DD`). Used by `scripts/package`.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let [out, date] = args.as_slice() else {
        eprintln!("usage: enrollgate-docgen OUT_DIR YYYY-MM-DD");
        std::process::exit(2);
    };
    let Some(date) = date.to_str().filter(|d| {
        d.len() == 10
            && d.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            })
    }) else {
        eprintln!("enrollgate-docgen: error: the date must be YYYY-MM-DD");
        std::process::exit(2);
    };
    let out = std::path::PathBuf::from(out);
    match enrollgate_docgen::write(&out, date) {
        Ok(w) => eprintln!(
            "enrollgate-docgen: {} man pages and {} completion scripts in {}",
            w.pages.len(),
            w.completions.len(),
            out.display()
        ),
        Err(e) => {
            eprintln!("enrollgate-docgen: error: writing {}: {e}", out.display());
            std::process::exit(1);
        }
    }
}
