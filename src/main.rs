//! picorelay: command and argv[0] dispatch; maps errors to exit codes. Nothing else.

mod base64;
mod bounce;
mod client;
mod clockstep;
mod config;
mod crypt;
mod delivery;
mod logging;
mod message;
mod oauth;
mod pacing;
mod passwd;
mod pressure;
mod privilege;
mod probe;
mod queue_cmd;
mod reload;
mod rewrite;
mod sendmail;
mod serve;
mod server;
mod session;
mod slots;
mod smtp;
mod smtp_stdio;
mod spool;
mod status;
mod storm;
mod sys;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "/etc/picorelay/picorelay.ini";

const HELP: &str = "\
picorelay — a small, dependable SMTP relay to one smarthost

usage: picorelay [-c FILE] [COMMAND]

commands:
  serve                    run the relay in the foreground (the default)
  check                    validate the config file and what it points to
  queue [list]             list queued messages
  queue show ID            print a queued message (envelope, then message)
  queue delete ID...       remove messages from the queue
  queue flush              make the running relay retry every deferred message now
  status [--json]          is the relay running; queue, last delivery, last errors, pause
                           (exit 0 running, 3 not running, 4 cannot tell)
  probe [--to ADDR]        connect to the smarthost as delivery does, print the transcript;
                           with --to, also send a test message to ADDR
  oauth login              sign the smarthost account in once (OAuth 2.0: Microsoft device
                           code, Google in a browser) and store the refresh token
  oauth status             is a refresh token stored; does the identity provider grant an
                           access token now (exit 0 yes, 1 no)
  sendmail [OPTIONS] [RCPT...]
                           queue a message read from stdin (sendmail-compatible; also
                           through links named sendmail, mailq, mail and mailx);
                           -bs: an SMTP session on stdin/stdout
  --version, --help

options:
  -c, --config FILE        config file (default: $PICORELAY_CONFIG, else /etc/picorelay/picorelay.ini)
";

/// Args is the parsed command line: the config path and the rest.
struct Args {
    config: PathBuf,
    rest: Vec<String>,
}

fn parse_args(argv: Vec<String>) -> Result<Args, String> {
    let mut config = std::env::var_os("PICORELAY_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut rest: Vec<String> = Vec::new();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        // sendmail's own options follow its word untouched (its -C names the config), but for
        // a -c / --config right after the word: the config everywhere else, and sendmail's own
        // -c (an obsolete no-op) takes no file, which would become a recipient.
        if rest.first().is_some_and(|w| w == "sendmail") {
            match a.as_str() {
                "-c" | "--config" if rest.len() == 1 => {
                    config = PathBuf::from(it.next().ok_or("-c needs a file name")?)
                }
                _ if rest.len() == 1 && a.starts_with("--config=") => {
                    config = PathBuf::from(&a["--config=".len()..])
                }
                _ => rest.push(a),
            }
            continue;
        }
        match a.as_str() {
            "-c" | "--config" => config = PathBuf::from(it.next().ok_or("-c needs a file name")?),
            _ if a.starts_with("--config=") => config = PathBuf::from(&a["--config=".len()..]),
            _ => rest.push(a),
        }
    }
    Ok(Args { config, rest })
}

fn main() -> ExitCode {
    // Through a link named sendmail, mailq, mail or mailx: that personality, with the
    // default config ($PICORELAY_CONFIG or the built-in path; its own -C overrides it).
    if let Some(p) = std::env::args_os()
        .next()
        .and_then(|a| sendmail::personality(&a))
    {
        let args: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let config = parse_args(Vec::new()).map(|a| a.config).unwrap_or_default();
        return ExitCode::from(sendmail::run_personality(p, &config, &args));
    }
    // Lossy: a non-UTF-8 argument must give an error message, not a panic.
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("picorelay: {e}");
            return ExitCode::from(2);
        }
    };
    let words: Vec<&str> = args.rest.iter().map(String::as_str).collect();
    let code = match words.as_slice() {
        ["--version"] | ["-V"] | ["version"] => {
            println!("picorelay {}", env!("CARGO_PKG_VERSION"));
            0
        }
        ["--help"] | ["-h"] | ["help"] => {
            print!("{HELP}");
            0
        }
        [] | ["serve"] => serve::run(&args.config),
        ["check"] => serve::check(&args.config),
        ["queue"] | ["queue", "list"] => queue_cmd::list(&args.config),
        ["queue", "show", id] => queue_cmd::show(&args.config, id),
        ["queue", "delete", ids @ ..] if !ids.is_empty() => queue_cmd::delete(&args.config, ids),
        ["queue", "flush"] => delivery::flush_command(&args.config),
        ["status"] => status::run(&args.config, false),
        ["status", "--json"] => status::run(&args.config, true),
        ["sendmail", rest @ ..] => sendmail::run(&args.config, rest),
        ["oauth", "login"] => oauth::login::login(&args.config),
        ["oauth", "status"] => oauth::login::status(&args.config),
        ["probe"] => probe::run(&args.config, None),
        ["probe", "--to", to] => probe::run(&args.config, Some(to)),
        ["probe", to] if to.starts_with("--to=") => {
            probe::run(&args.config, Some(&to["--to=".len()..]))
        }
        _ => {
            eprintln!(
                "picorelay: unknown command {:?}; see picorelay --help",
                args.rest.join(" ")
            );
            2
        }
    };
    ExitCode::from(code)
}
