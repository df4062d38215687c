//! The floor of a step, for `benches/agent.sh`: the file system and process work that any agent
//! honouring the contract does for the benchmark's typical step, and nothing else. It parses,
//! merges, validates and logs nothing.
//!
//! `step_floor <repo> <files> <action>`: creates `<repo>/.opschain/step/` with the four runtime
//! files (as large as the step context), writes `<files>` declared files of 280 bytes under
//! `<repo>/config/`, runs `<action>` and waits for it, then writes `.opschain/step_result.json`
//! as the contract says (a temporary file, rename; no fsync), as the agent does.
//!
//! Run side by side with the agent on the same disk, it tells what of the agent's overhead is the
//! disk's and the kernel's (this machine's ext4 slows as it ages between runs) and what is the
//! agent's own.

use std::io::Write;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, repo, files, action] = args.as_slice() else {
        eprintln!("usage: step_floor <repo> <files> <action>");
        std::process::exit(64);
    };
    let repo = Path::new(repo);
    let files: usize = files.parse().expect("a number of files");
    let folder = repo.join(".opschain");
    let context = std::fs::read(folder.join("step_context.json"))?;

    let runtime = folder.join("step");
    std::fs::create_dir(&runtime)?;
    for name in ["properties.json", "project_properties.json", "environment_properties.json", "child_steps"] {
        std::fs::write(runtime.join(name), &context)?;
    }
    let config = repo.join("config");
    std::fs::create_dir_all(&config)?;
    for i in 0..files {
        std::fs::write(config.join(format!("file-{i}.conf")), [b'x'; 280])?;
    }

    let status = std::process::Command::new(action).current_dir(repo).status()?;

    let tmp = folder.join(".step_result.json.tmp");
    let mut result = std::fs::File::create(&tmp)?;
    result.write_all(&context)?;
    std::fs::rename(&tmp, folder.join("step_result.json"))?;
    std::process::exit(status.code().unwrap_or(1));
}
