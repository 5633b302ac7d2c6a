//! The commands: read through [`crate::client`], draw with [`crate::render`].

use std::{
    cell::Cell,
    future::Future,
    io::{IsTerminal, Write},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use outrigger_api::rollout::RolloutPhase;

use crate::{
    args::{Args, Command, Get, Watch},
    client::{Cluster, Error as ClientError, CONTROL_ANNOTATION},
    examples,
    render::{rollout, scaling, shards},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no example named {0:?}; there are:\n{1}")]
    NoExample(String, String),
    #[error("cannot write to the terminal: {0}")]
    Output(#[from] std::io::Error),
}

pub async fn run(args: Args) -> Result<(), Error> {
    let Args {
        namespace,
        width,
        command,
    } = args;
    match command {
        Command::Example { name: None } => {
            print!(
                "Examples (`kubectl outrigger example NAME | kubectl apply -f -`):\n{}",
                examples::list()
            );
            Ok(())
        }
        Command::Example { name: Some(name) } => match examples::manifest(&name) {
            Some(text) => {
                print!("{text}");
                Ok(())
            }
            None => Err(Error::NoExample(name, examples::list())),
        },
        Command::Get {
            what:
                Get::Rollout {
                    name,
                    watch,
                    until_finished,
                },
        } => {
            let cluster = Cluster::connect(namespace).await?;
            let seen_running = Cell::new(false);
            let (cluster, name, seen_running) = (&cluster, &name, &seen_running);
            repeat(watch, || async move {
                let (service, strategy) = cluster.rollout(name).await?;
                let text = rollout::render(&rollout::RolloutView {
                    service: &service,
                    strategy: strategy.as_ref(),
                    now: Timestamp::now(),
                    width,
                });
                let status = service.status.as_ref().and_then(|s| s.rollout.as_ref());
                let phase = status.map_or(RolloutPhase::Healthy, |r| r.phase);
                // Finished means ended after running: a watch started just after a template change
                // first sees the previous rollout's end.
                seen_running.set(
                    seen_running.get()
                        || matches!(
                            phase,
                            RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::RollingBack
                        ),
                );
                let finished = until_finished
                    && seen_running.get()
                    && matches!(
                        phase,
                        RolloutPhase::Promoted | RolloutPhase::Aborted | RolloutPhase::Healthy
                    );
                Ok((text, finished))
            })
            .await
        }
        Command::Promote { name } => control(namespace, &name, "promote").await,
        Command::Abort { name } => control(namespace, &name, "abort").await,
        Command::Pause { name } => control(namespace, &name, "pause").await,
        Command::Resume { name } => control(namespace, &name, "resume").await,
        Command::Shards { name, watch } => {
            let cluster = Cluster::connect(namespace).await?;
            let (cluster, name) = (&cluster, &name);
            repeat(watch, || async move {
                let (service, reports) = cluster.sharded(name).await?;
                let text = shards::render(&shards::ShardsView {
                    service: &service,
                    ambassadors: &reports,
                    now: Timestamp::now(),
                    width,
                });
                Ok((text, false))
            })
            .await
        }
        Command::Scaling { name, watch } => {
            let cluster = Cluster::connect(namespace).await?;
            let (cluster, name) = (&cluster, &name);
            repeat(watch, || async move {
                let policy = cluster.scaling(name).await?;
                let text = scaling::render(&scaling::ScalingView {
                    policy: &policy,
                    now: Timestamp::now(),
                    width,
                });
                Ok((text, false))
            })
            .await
        }
    }
}

async fn control(namespace: Option<String>, name: &str, value: &str) -> Result<(), Error> {
    let cluster = Cluster::connect(namespace).await?;
    let service = cluster.control(name, value).await?;
    let phase = service
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .map_or(RolloutPhase::Healthy, |r| r.phase);
    println!(
        "replicatedservice/{name}: {value} requested ({CONTROL_ANNOTATION}={value}); rollout was {phase:?}, \
         the operator acts on it at once and removes the annotation"
    );
    Ok(())
}

/// Draws once, or with `watch` redraws every interval while the text changes, until `draw` says
/// it is finished or the user presses Ctrl-C. On a terminal each frame replaces the last; piped,
/// frames follow each other separated by a blank line.
async fn repeat<F, Fut>(watch: Watch, mut draw: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(String, bool), ClientError>>,
{
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let (text, finished) = draw().await?;
        if text != last {
            let mut out = std::io::stdout().lock();
            if watch.watch && terminal {
                write!(out, "\x1b[2J\x1b[H")?;
            } else if !last.is_empty() {
                writeln!(out)?;
            }
            write!(out, "{text}")?;
            out.flush()?;
            last = text;
        }
        if !watch.watch || finished {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(watch.interval.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
