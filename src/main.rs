//! The `intxd` binary: the daemon and its tools, as subcommands.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
