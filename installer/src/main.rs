//! `slipway`: the on-host installer. See [`slipway::commands`] for the
//! command line and the exit codes.

use clap::Parser;

fn main() {
    let cli = match slipway::commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and exit 0; usage errors exit 2.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    std::process::exit(slipway::commands::run(cli));
}
