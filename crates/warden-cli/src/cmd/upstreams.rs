//! `warden upstreams pin`: pins each upstream's executable and tools (INV-023).

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start each upstream, hash its executable, files and tools, and print the `pins:` block;
    /// with --write, put it into the manifest and raise its version.
    Pin {
        /// Data directory.
        #[arg(long, default_value = ".warden")]
        data: PathBuf,
        /// The manifest (default DATA/manifest.yaml).
        #[arg(long, alias = "config")]
        manifest: Option<PathBuf>,
        /// Write the pins into the manifest (and raise `version`), instead of printing them.
        #[arg(long)]
        write: bool,
    },
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    let Command::Pin {
        data,
        manifest,
        write,
    } = c;
    let path = manifest.unwrap_or_else(|| data.join("manifest.yaml"));
    let m = match warden_runtime::bundle::load_manifest(&path) {
        Ok(m) => m,
        Err(e) => {
            super::print_load_error(&e);
            return Ok(ExitCode::from(super::EXIT_INPUT));
        }
    };
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    let (secrets, errors) = warden_executor::Secrets::load(&m.secrets, dir);
    for e in errors {
        eprintln!("warning: {e}");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let observed = rt
        .block_on(warden_executor::observe(
            m.upstreams
                .iter()
                .map(|u| u.clone().with_paths_under(dir))
                .collect(),
            secrets,
            warden_runtime::execution::sandbox_config(&data, &m, std::env::current_exe()?),
        ))
        .map_err(anyhow::Error::msg)?;
    let mut pins = Vec::new();
    let mut failed = false;
    for (name, o) in observed {
        match o {
            Ok(o) => {
                let mut files = std::collections::BTreeMap::new();
                for f in m
                    .raw
                    .pins
                    .get(&name)
                    .map(|p| p.files.keys())
                    .into_iter()
                    .flatten()
                {
                    let h = rt
                        .block_on(warden_executor::hash_file(std::path::Path::new(f)))
                        .map_err(anyhow::Error::msg)?;
                    files.insert(f.clone(), h);
                }
                eprintln!(
                    "{name}: {} tool(s){}",
                    o.tools.len(),
                    o.executable
                        .as_ref()
                        .map(|(p, _)| format!(", executable {}", p.display()))
                        .unwrap_or_default()
                );
                pins.push(warden_runtime::execution::UpstreamPins {
                    name,
                    executable: o.executable.map(|(_, h)| h),
                    files,
                    tools: o.tools,
                });
            }
            Err(e) => {
                eprintln!("error: upstream `{name}`: {e}");
                failed = true;
            }
        }
    }
    if failed {
        eprintln!("error: not every upstream could be observed; nothing written");
        return Ok(ExitCode::from(super::EXIT_INPUT));
    }
    let block = warden_runtime::execution::pins_yaml(&pins);
    if !write {
        out!("{}", block.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading `{}`", path.display()))?;
    let new = warden_runtime::execution::write_pins(&text, &block)?;
    // The result must load before it replaces the manifest.
    if let Err(e) = warden_policy::parse_manifest(&path.display().to_string(), &new) {
        super::print_load_error(&e);
        anyhow::bail!(
            "the pinned manifest would not load; `{}` is unchanged",
            path.display()
        );
    }
    let tmp = path.with_extension("yaml.pinning");
    std::fs::write(&tmp, &new).with_context(|| format!("writing `{}`", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing `{}`", path.display()))?;
    out!(
        "pinned {} upstream(s) in {} (version raised; restart a running gateway to apply new pins: a reload does not change upstreams)",
        pins.len(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
