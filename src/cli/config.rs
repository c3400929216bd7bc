//! `anomalyncd config check FILE` and `anomalyncd config show`.

use std::path::PathBuf;

use clap::Subcommand;

use super::Ctx;
use anomalyncd::config::Config;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file and print the resolved config (exit 0), or the error (exit 2).
    Check {
        /// The YAML file (the reference's configs/AnomalyNCD.yaml loads unchanged).
        file: PathBuf,
        /// Override a key, e.g. --set training.epochs=5 (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
    /// Print the default config (all keys, with the reference's defaults).
    Show,
}

pub fn run(cmd: &ConfigCommand, _ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { file, set } => {
            let cfg = Config::load(Some(file), set)?;
            println!("# {}: OK", file.display());
            print!("{}", cfg.to_yaml());
        }
        ConfigCommand::Show => print!("{}", Config::default().to_yaml()),
    }
    Ok(())
}
