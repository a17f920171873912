//! The runner's unit tests (compiled only under `#[cfg(test)]`, see `mod.rs`).

use super::*;
use crate::docker::cli::DockerError;
use crate::docker::fixtures::{spec, view, A, B};
use crate::docker::protocol::Action;
use crate::docker::spec::GpuRequest;
use crate::state::{GpuReport, GpuSample, NvmlState, SampleWriter};

/// The runner's view of the published state, with the GPU sampler's writer beside it.
struct Published {
    snapshot: Arc<Snapshot>,
    gpu: SampleWriter<GpuReport>,
}

impl Published {
    fn set_gpus(&self, report: GpuReport) {
        let health = report.health();
        self.gpu.publish(report, health, Duration::ZERO);
    }
}

impl std::ops::Deref for Published {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

fn gpu(index: u32) -> GpuSample {
    GpuSample {
        name: Some("Fake".into()),
        uuid: Some(format!("GPU-{index}")),
        ..GpuSample::empty(index)
    }
}

fn gpus(count: u32) -> GpuReport {
    GpuReport {
        state: NvmlState::Ok,
        driver_version: None,
        gpus: (0..count).map(gpu).collect(),
    }
}

fn runner() -> (Runner, Receiver<Work>, Published) {
    let (jobs, queue) = crossbeam_channel::bounded(WORK_QUEUE);
    let (snapshot, writers) = crate::state::new();
    let snapshot = Published {
        snapshot,
        gpu: writers.gpu,
    };
    snapshot.set_gpus(gpus(2));
    let runner = Runner::new(
        Arc::clone(&snapshot.snapshot),
        writers.docker,
        vec![9200],
        Duration::from_secs(30),
        jobs.clone(),
        jobs.clone(),
        jobs,
    );
    (runner, queue, snapshot)
}

fn ask<T>(
    runner: &mut Runner,
    make: impl FnOnce(Reply<T>) -> Request,
) -> Option<Result<T, ContainerError>> {
    ask_later(runner, make).try_recv().ok()
}

/// Sends a request; its answer arrives on the receiver once the work is done.
fn ask_later<T>(
    runner: &mut Runner,
    make: impl FnOnce(Reply<T>) -> Request,
) -> Receiver<Result<T, ContainerError>> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    runner.handle(make(reply));
    answer
}

#[test]
fn rebuild_publishes_containers_allocations_and_health() {
    let (mut r, _queue, snapshot) = runner();
    assert!(matches!(
        ask(&mut r, |reply| Request::List { reply }),
        Some(Err(ContainerError::DockerUnavailable(_)))
    ));
    r.apply_reconcile(
        0,
        Ok(vec![
            view(A, "a", &[1], "running"),
            view(B, "b", &[], "exited"),
        ]),
    );
    let summaries = snapshot.containers();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].claim_id, "a");
    assert_eq!(summaries[0].gpu_ids, vec![1]);
    assert_eq!(summaries[1].state, "exited");
    let allocations = snapshot.gpu_allocations();
    assert_eq!(allocations.len(), 1);
    assert_eq!(allocations[&1].container_id, A);
    assert_eq!(snapshot.health()["docker"], "ok");
    let list = ask(&mut r, |reply| Request::List { reply })
        .unwrap()
        .unwrap();
    assert_eq!(list.len(), 2);
}

#[test]
fn create_reserves_before_docker_runs_and_releases_on_failure() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    assert!(
        ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply
        })
        .is_none(),
        "answered when the worker reports"
    );
    let Ok(Work::Create {
        ticket,
        gpus,
        uuids,
        ..
    }) = queue.try_recv()
    else {
        panic!("no create queued");
    };
    assert_eq!((gpus, uuids), (vec![0], vec!["GPU-0".to_string()]));
    // While docker works, the GPU, the claim and the port are taken.
    let second = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("b", GpuRequest::Ids(vec![0]))),
        reply,
    });
    assert!(matches!(
        second,
        Some(Err(ContainerError::Conflict {
            code: "gpu_in_use",
            ..
        }))
    ));
    let same_claim = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::None)),
        reply,
    });
    assert!(matches!(
        same_claim,
        Some(Err(ContainerError::Conflict {
            code: "claim_in_use",
            ..
        }))
    ));
    let port = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("c", GpuRequest::None)),
        reply,
    });
    assert!(matches!(
        port,
        Some(Err(ContainerError::Conflict {
            code: "port_in_use",
            ..
        }))
    ));
    let unknown = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("d", GpuRequest::Ids(vec![5]))),
        reply,
    });
    assert!(matches!(unknown, Some(Err(ContainerError::Invalid(_)))));
    assert!(queue.try_recv().is_err(), "refused creates queue nothing");

    // Docker failed: everything is released.
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Err(ContainerError::Docker(DockerError::BadOutput {
            command: "docker run".into(),
            message: "boom".into(),
        })),
    });
    assert!(r.ledger.holdings().is_empty());
    // Docker succeeded: the container holds the GPU, published for metrics.
    let answer = ask_later(&mut r, |reply| Request::Create {
        spec: Box::new(spec("b", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    r.finish(Done::Created {
        ticket,
        claim_id: "b".into(),
        result: Ok(view(A, "b", &[0], "running")),
    });
    assert_eq!(answer.try_recv().unwrap().unwrap().id, A);
    assert_eq!(snapshot.gpu_allocations()[&0].claim_id, "b");
}

#[test]
fn one_operation_at_a_time_per_container() {
    let (mut r, queue, _snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![view(A, "a", &[], "running")]));
    assert!(ask(&mut r, |reply| Request::Act {
        id: "a".into(),
        action: Action::Stop,
        reply
    })
    .is_none());
    let again = ask(&mut r, |reply| Request::Delete {
        id: A.into(),
        reply,
    });
    assert!(matches!(
        again,
        Some(Err(ContainerError::Conflict {
            code: "operation_in_progress",
            ..
        }))
    ));
    let Ok(Work::Act { ticket, .. }) = queue.try_recv() else {
        panic!("no stop queued");
    };
    r.finish(Done::Acted {
        ticket,
        id: A.into(),
        result: Ok(view(A, "a", &[], "exited")),
    });
    assert_eq!(r.table.view(A).unwrap().state, "exited");
    assert!(ask(&mut r, |reply| Request::Delete {
        id: A.into(),
        reply
    })
    .is_none());
}

#[test]
fn unreachable_docker_and_missing_gpus_are_reported() {
    let (mut r, _queue, snapshot) = runner();
    r.apply_reconcile(
        0,
        Err(DockerError::Unreachable {
            message: "Cannot connect to the Docker daemon".into(),
        }),
    );
    assert!(snapshot.health()["docker"].starts_with("unavailable: "));
    let create = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::None)),
        reply,
    });
    assert!(matches!(
        create,
        Some(Err(ContainerError::DockerUnavailable(_)))
    ));

    // Back, with a container whose GPU 1 is no longer on the node.
    snapshot.set_gpus(gpus(1));
    r.apply_reconcile(0, Ok(vec![view(A, "a", &[1], "running")]));
    let health = snapshot.health()["docker"].clone();
    assert!(
        health.starts_with("degraded: utopia-a: GPU 1 (GPU-1)"),
        "{health}"
    );
    let shown = ask(&mut r, |reply| Request::Get {
        id: "a".into(),
        reply,
    })
    .unwrap()
    .unwrap();
    assert_eq!(shown.warnings.len(), 1);
    assert_eq!(snapshot.gpu_allocations()[&1].container_id, A, "still held");
}

#[test]
fn a_stale_refresh_or_reconcile_never_brings_back_a_removed_container() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![view(A, "a", &[0], "running")]));
    // `die` event: a refresh is queued; its inspect still sees the container...
    r.on_event(ContainerEvent {
        id: A.into(),
        action: "die".into(),
        time_nano: 0,
        name: String::new(),
    });
    let Ok(Work::Refresh { generation, .. }) = queue.try_recv() else {
        panic!("no refresh queued");
    };
    // ...but `destroy` is handled before the refresh reports, and a reconcile that started
    // after the removal has run meanwhile.
    r.on_event(ContainerEvent {
        id: A.into(),
        action: "destroy".into(),
        time_nano: 0,
        name: String::new(),
    });
    let now = r.table.generation();
    r.apply_reconcile(now, Ok(vec![]));
    r.finish(Done::Refreshed {
        id: A.into(),
        generation,
        result: Ok(Some(view(A, "a", &[0], "exited"))),
    });
    assert!(!r.table.contains(A), "removed container came back");
    assert!(
        snapshot.gpu_allocations().is_empty(),
        "GPU 0 held by a ghost"
    );
    // A reconcile listing taken before the removal does not bring it back either.
    r.apply_reconcile(generation, Ok(vec![view(A, "a", &[0], "exited")]));
    assert!(!r.table.contains(A));
    let again = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    assert!(again.is_none(), "the claim and GPU are free: {again:?}");
}

#[test]
fn a_container_being_created_is_409_not_404_and_a_delete_gives_it_up() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    for id in ["a", "utopia-a"] {
        let stop = ask(&mut r, |reply| Request::Act {
            id: id.into(),
            action: Action::Stop,
            reply,
        });
        assert!(
            matches!(stop, Some(Err(ContainerError::Conflict { .. }))),
            "{id}"
        );
        let get = ask(&mut r, |reply| Request::Get {
            id: id.into(),
            reply,
        });
        // Shown as being created (a create that answered 202 is followed here).
        let shown = get.unwrap().unwrap();
        assert_eq!((shown.state.as_str(), shown.id.as_str()), ("creating", ""));
        assert_eq!(shown.gpu_ids, vec![0]);
    }
    assert!(
        queue.try_recv().is_err(),
        "nothing queued for the refused requests"
    );
    assert!(matches!(
        ask(&mut r, |reply| Request::Delete {
            id: "b".into(),
            reply
        }),
        Some(Err(ContainerError::NotFound(_)))
    ));
    // A delete during the create (a pull can take many minutes; a 409 left the container to
    // start and hold GPU 0 after its rental was cancelled, unless the platform came back):
    // the claim is given up (202), nothing is freed while docker may still make it, asked
    // twice it answers the same.
    for id in ["utopia-a", "a"] {
        let deleted = ask(&mut r, |reply| Request::Delete {
            id: id.into(),
            reply,
        })
        .unwrap()
        .unwrap();
        assert!(!deleted.deleted && deleted.gpu_ids.is_empty(), "{id}");
        assert_eq!(deleted.claim_id, "a");
    }
    assert!(r.ledger.by_claim("a").is_some_and(|h| h.given_up));
    let other = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("b", GpuRequest::Ids(vec![0]))),
        reply,
    });
    assert!(
        matches!(
            other,
            Some(Err(ContainerError::Conflict {
                code: "gpu_in_use",
                ..
            }))
        ),
        "GPU 0 freed while docker may still start a's container: {other:?}"
    );
    // The create ends with a container: it is removed at once, and then GPU 0 is free.
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Ok(view(A, "a", &[0], "running")),
    });
    let Ok(Work::Delete { ticket, view: gone }) = queue.try_recv() else {
        panic!("the given-up container is not removed");
    };
    assert_eq!(gone.id, A);
    r.finish(Done::Deleted {
        ticket,
        view: gone,
        result: Ok(()),
    });
    assert!(r.ledger.holdings().is_empty());
    assert!(snapshot.gpu_allocations().is_empty());
}

#[test]
fn a_rebuild_that_fails_says_why() {
    let (mut r, _queue, snapshot) = runner();
    r.apply_reconcile(
        0,
        Err(DockerError::BadOutput {
            command: "docker container inspect".into(),
            message: "expected a string at line 1 column 9".into(),
        }),
    );
    let health = snapshot.health()["docker"].clone();
    assert!(
        health.starts_with("unavailable: ") && health.contains("column 9"),
        "{health}"
    );
    let list = ask(&mut r, |reply| Request::List { reply });
    assert!(
        matches!(&list, Some(Err(ContainerError::DockerUnavailable(m))) if m.contains("column 9")),
        "{list:?}"
    );
    // Once rebuilt, a later failed reconcile keeps serving from the ledger.
    r.apply_reconcile(0, Ok(vec![]));
    r.apply_reconcile(
        0,
        Err(DockerError::BadOutput {
            command: "docker container inspect".into(),
            message: "garbage".into(),
        }),
    );
    assert_eq!(snapshot.health()["docker"], "ok");
    assert!(matches!(
        ask(&mut r, |reply| Request::List { reply }),
        Some(Ok(_))
    ));
}

#[test]
fn a_gpu_count_larger_than_the_node_is_400_not_409() {
    let (mut r, queue, _snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    let r3 = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Count(3))),
        reply,
    });
    assert!(
        matches!(&r3, Some(Err(ContainerError::Invalid(e))) if e.field == "gpu_count"),
        "{r3:?}"
    );
    assert!(queue.try_recv().is_err());
    assert!(r.ledger.holdings().is_empty());
    // Two exist: more than are free is a conflict (a holder may go away).
    r.apply_reconcile(0, Ok(vec![view(A, "b", &[1], "running")]));
    let r2 = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Count(2))),
        reply,
    });
    assert!(
        matches!(
            r2,
            Some(Err(ContainerError::Conflict {
                code: "gpu_in_use",
                ..
            }))
        ),
        "{r2:?}"
    );
}

#[test]
fn a_gpu_is_held_by_its_uuid_too_when_indices_shifted() {
    let (mut r, queue, _snapshot) = runner();
    // Before a restart, this container was given the GPU that is GPU-0 now, then at
    // index 1 (a GPU in front of it fell off the bus, the indices moved up).
    let mut shifted = view(A, "old", &[1], "exited");
    shifted.gpu_uuids = vec!["GPU-0".into()];
    r.apply_reconcile(0, Ok(vec![shifted]));
    let by_index = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("new", GpuRequest::Ids(vec![0]))),
        reply,
    });
    assert!(
        matches!(&by_index, Some(Err(ContainerError::Conflict { code: "gpu_in_use", message }))
            if message.contains("GPU-0") && message.contains("old")),
        "{by_index:?}"
    );
    let by_count = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("new", GpuRequest::Count(1))),
        reply,
    });
    assert!(
        matches!(
            by_count,
            Some(Err(ContainerError::Conflict {
                code: "gpu_in_use",
                ..
            }))
        ),
        "{by_count:?}"
    );
    assert!(queue.try_recv().is_err(), "nothing was created");
    assert!(r.ledger.by_claim("new").is_none());
}

#[test]
fn a_container_removed_before_its_create_reports_holds_nothing() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    // `docker rm -f` right after `docker run`: its destroy event arrives before the
    // worker's report.
    r.on_event(ContainerEvent {
        id: A.into(),
        action: "destroy".into(),
        time_nano: 0,
        name: String::new(),
    });
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Ok(view(A, "a", &[0], "running")),
    });
    assert!(!r.table.contains(A), "a removed container is listed");
    assert!(r.ledger.holdings().is_empty(), "{:?}", r.ledger.holdings());
    assert!(snapshot.gpu_allocations().is_empty());
    // Nor does a stop that inspected it just before it went.
    r.apply_reconcile(
        r.table.generation(),
        Ok(vec![view(B, "b", &[1], "running")]),
    );
    ask(&mut r, |reply| Request::Act {
        id: "b".into(),
        action: Action::Stop,
        reply,
    });
    let Ok(Work::Act { ticket, .. }) = queue.try_recv() else {
        panic!("no stop queued");
    };
    r.on_event(ContainerEvent {
        id: B.into(),
        action: "destroy".into(),
        time_nano: 0,
        name: String::new(),
    });
    r.finish(Done::Acted {
        ticket,
        id: B.into(),
        result: Ok(view(B, "b", &[1], "exited")),
    });
    assert_eq!(r.table.len(), 0);
    assert!(r.ledger.holdings().is_empty());
}

#[test]
fn an_unusable_renters_network_refuses_creates_and_degrades_health() {
    let (mut r, queue, snapshot) = runner();
    r.apply_network(Some(
        "docker network utopia-renters exists but was not created by the agent".into(),
    ));
    r.apply_reconcile(0, Ok(vec![]));
    let create = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    assert!(
        matches!(&create, Some(Err(ContainerError::DockerUnavailable(m))) if m.contains("not created by the agent")),
        "{create:?}"
    );
    assert!(queue.try_recv().is_err());
    assert!(r.ledger.holdings().is_empty());
    assert!(snapshot.health()["docker"].starts_with("degraded: docker network"));
    // Strangers on a good network are reported, creates go on.
    r.apply_network(Some(
        "docker network n is shared with containers the agent did not create: x".into(),
    ));
    r.publish();
    assert!(ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    })
    .is_none());
    assert!(snapshot.health()["docker"].contains("shared with containers"));
    r.apply_network(None);
    r.publish();
    assert_eq!(snapshot.health()["docker"], "ok");
}

fn timed_out() -> ContainerError {
    ContainerError::Timeout("`docker run` did not finish within 2s and was killed".into())
}

#[test]
fn a_timed_out_create_keeps_its_gpu_until_a_reconcile_decides() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    let answer = ask_later(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    let before = r.table.generation();
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Err(timed_out()),
    });
    assert!(
        matches!(answer.try_recv(), Ok(Err(ContainerError::Timeout(m))) if m.contains("stay reserved"))
    );
    // GPU 0 is not handed to another claim.
    let second = ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("b", GpuRequest::Ids(vec![0]))),
        reply,
    });
    assert!(
        matches!(
            &second,
            Some(Err(ContainerError::Conflict {
                code: "gpu_in_use",
                ..
            }))
        ),
        "{second:?}"
    );
    let get = ask(&mut r, |reply| Request::Get {
        id: "a".into(),
        reply,
    });
    let shown = get.unwrap().unwrap();
    assert_eq!(shown.state, "unknown");
    assert!(
        shown
            .error
            .as_deref()
            .is_some_and(|e| e.contains("stay reserved")),
        "{shown:?}"
    );
    // A reconcile that started before the timeout decides nothing...
    r.apply_reconcile(before, Ok(vec![]));
    assert!(r.ledger.by_claim("a").is_some());
    // ...one started after it finds the container: adopted with what it reserved.
    let now = r.table.generation();
    r.apply_reconcile(now, Ok(vec![view(A, "a", &[0], "running")]));
    assert!(r.table.view(A).unwrap().warnings.is_empty());
    assert_eq!(snapshot.gpu_allocations()[&0].container_id, A);
    assert!(r.ledger.gpu_taken_from(A).is_none());
}

#[test]
fn a_timed_out_create_that_made_nothing_is_released_and_a_given_up_one_removed() {
    let (mut r, queue, snapshot) = runner();
    r.unknown_grace_period = Duration::ZERO;
    r.apply_reconcile(0, Ok(vec![]));
    for claim in ["a", "b"] {
        let gpu = if claim == "a" { 0 } else { 1 };
        let mut create = spec(claim, GpuRequest::Ids(vec![gpu]));
        create.ports[0].host_port += gpu as u16;
        ask(&mut r, |reply| Request::Create {
            spec: Box::new(create),
            reply,
        });
        let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
            panic!("no create queued");
        };
        r.finish(Done::Created {
            ticket,
            claim_id: claim.into(),
            result: Err(timed_out()),
        });
    }
    // Claim b is given up: 202-style answer, nothing freed yet.
    let deleted = ask(&mut r, |reply| Request::Delete {
        id: "utopia-b".into(),
        reply,
    })
    .unwrap()
    .unwrap();
    assert!(!deleted.deleted && deleted.gpu_ids.is_empty());
    assert!(r.ledger.by_claim("b").is_some_and(|h| h.given_up));
    // A reconcile that started before the grace ended decides nothing.
    r.apply_reconcile(r.table.generation(), Ok(vec![]));
    assert!(r.ledger.by_claim("a").is_some());
    // The one started after it sees b's container (docker made it after all), not a's.
    r.start_reconcile();
    let Ok(Work::Reconcile { generation }) = queue.try_recv() else {
        panic!("no reconcile queued");
    };
    r.reconcile_in_flight = false;
    r.apply_reconcile(generation, Ok(vec![view(B, "b", &[1], "running")]));
    assert!(r.ledger.by_claim("a").is_none(), "a's GPU 0 is free again");
    let Ok(Work::Delete { ticket, view: gone }) = queue.try_recv() else {
        panic!("the given-up container is not removed");
    };
    assert_eq!(gone.id, B);
    r.finish(Done::Deleted {
        ticket,
        view: gone,
        result: Ok(()),
    });
    assert!(r.ledger.holdings().is_empty());
    assert!(snapshot.gpu_allocations().is_empty());
}

#[test]
fn a_container_over_someone_elses_gpu_is_never_started_and_frees_nothing_of_theirs() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(
        0,
        Ok(vec![
            view(A, "a", &[0], "running"),
            view(B, "late", &[0], "exited"),
        ]),
    );
    for action in [Action::Start, Action::Restart] {
        let start = ask(&mut r, |reply| Request::Act {
            id: B.into(),
            action,
            reply,
        });
        assert!(
            matches!(&start, Some(Err(ContainerError::Conflict { code: "gpu_in_use", message })) if message.contains("claim a")),
            "{start:?}"
        );
    }
    assert!(queue.try_recv().is_err(), "nothing started");
    // Deleting it frees nothing a holds.
    let answer = ask_later(&mut r, |reply| Request::Delete {
        id: B.into(),
        reply,
    });
    let Ok(Work::Delete { ticket, view }) = queue.try_recv() else {
        panic!("no delete queued");
    };
    r.finish(Done::Deleted {
        ticket,
        view,
        result: Ok(()),
    });
    let deleted = answer.try_recv().unwrap().unwrap();
    assert!(deleted.deleted && deleted.gpu_ids.is_empty(), "{deleted:?}");
    assert_eq!(snapshot.gpu_allocations()[&0].container_id, A);
}

#[test]
fn a_late_container_over_a_gpu_given_to_another_is_stopped() {
    let (mut r, queue, _snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![view(A, "a", &[0], "running")]));
    // A create docker finished long after its reservation was released.
    r.apply_reconcile(
        r.table.generation(),
        Ok(vec![
            view(A, "a", &[0], "running"),
            view(B, "late", &[0], "running"),
        ]),
    );
    let Ok(Work::Act {
        id,
        action: Action::Stop,
        ..
    }) = queue.try_recv()
    else {
        panic!("the usurper is not stopped");
    };
    assert_eq!(id, B);
    assert!(queue.try_recv().is_err(), "the first holder is left alone");
}

#[test]
fn log_reads_are_bounded_and_have_their_own_lane() {
    let (jobs, job_queue) = crossbeam_channel::bounded(WORK_QUEUE);
    let (logs, log_queue) = crossbeam_channel::bounded(MAX_LOG_READS);
    let (snapshot, writers) = crate::state::new();
    let mut r = Runner::new(
        snapshot,
        writers.docker,
        vec![],
        Duration::from_secs(30),
        jobs.clone(),
        jobs,
        logs,
    );
    r.apply_reconcile(0, Ok(vec![view(A, "a", &[], "running")]));
    for _ in 0..MAX_LOG_READS {
        assert!(ask(&mut r, |reply| Request::Logs {
            id: "a".into(),
            tail: 10,
            reply
        })
        .is_none());
    }
    let over = ask(&mut r, |reply| Request::Logs {
        id: "a".into(),
        tail: 10,
        reply,
    });
    assert!(
        matches!(over, Some(Err(ContainerError::Busy(_)))),
        "{over:?}"
    );
    // A delete is queued on its own lane meanwhile.
    assert!(ask(&mut r, |reply| Request::Delete {
        id: "a".into(),
        reply
    })
    .is_none());
    assert!(matches!(job_queue.try_recv(), Ok(Work::Delete { .. })));
    let Ok(Work::Logs { ticket, .. }) = log_queue.try_recv() else {
        panic!("no log read queued");
    };
    r.finish(Done::Logs {
        ticket,
        result: Ok(String::new()),
    });
    assert!(ask(&mut r, |reply| Request::Logs {
        id: "a".into(),
        tail: 10,
        reply
    })
    .is_none());
}

#[test]
fn a_create_in_progress_shows_its_step_then_its_error() {
    let (mut r, queue, _snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    let pulled = crate::docker::pull_progress::PullProgress {
        layers_total: 3,
        layers_done: 1,
        bytes_done: Some(1_000),
        bytes_total: Some(4_000),
    };
    r.finish(Done::Progress {
        claim_id: "a".into(),
        status: "pulling image busybox".into(),
        pull: Some(pulled.clone()),
    });
    let get = |r: &mut Runner| {
        ask(r, |reply| Request::Get {
            id: "utopia-a".into(),
            reply,
        })
        .unwrap()
        .unwrap()
    };
    let shown = get(&mut r);
    assert_eq!(
        (shown.state.as_str(), shown.status.as_str()),
        ("creating", "pulling image busybox")
    );
    assert_eq!(shown.pull, Some(pulled));
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Err(ContainerError::ImagePull("registry unreachable".into())),
    });
    let shown = get(&mut r);
    assert_eq!(shown.state, "failed");
    assert_eq!(shown.error.as_deref(), Some("registry unreachable"));
    assert!(r.ledger.holdings().is_empty());
    // DELETE of the failed claim forgets it: 200 (deleted, nothing freed), then GET is a 404.
    let deleted = ask(&mut r, |reply| Request::Delete {
        id: "a".into(),
        reply,
    })
    .unwrap()
    .unwrap();
    assert!(deleted.deleted && deleted.gpu_ids.is_empty(), "{deleted:?}");
    assert!(matches!(
        ask(&mut r, |reply| Request::Get {
            id: "a".into(),
            reply
        })
        .unwrap(),
        Err(ContainerError::NotFound(_))
    ));
    // A new create of the claim forgets the old outcome.
    ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    assert_eq!(get(&mut r).state, "creating");
}

#[test]
fn the_list_shows_creates_in_progress_and_failed_ones_like_get() {
    let (mut r, queue, _snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![view(A, "up", &[1], "running")]));
    let list = |r: &mut Runner| {
        let mut shown: Vec<(String, String)> = ask(r, |reply| Request::List { reply })
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|v| (v.claim_id, v.state))
            .collect();
        shown.sort();
        shown
    };
    for claim in ["a", "b"] {
        ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec(claim, GpuRequest::Ids(vec![0]))),
            reply,
        });
    }
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    let pair = |c: &str, s: &str| (c.to_string(), s.to_string());
    // "b" asked for the GPU "a" holds: refused, so never listed.
    assert_eq!(
        list(&mut r),
        vec![pair("a", "creating"), pair("up", "running")]
    );
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Err(ContainerError::ImagePull("registry unreachable".into())),
    });
    assert_eq!(
        list(&mut r),
        vec![pair("a", "failed"), pair("up", "running")]
    );
    // A new create of the claim: listed once, as in progress again.
    ask(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    assert_eq!(
        list(&mut r),
        vec![pair("a", "creating"), pair("up", "running")]
    );
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Ok(view(B, "a", &[0], "running")),
    });
    assert_eq!(
        list(&mut r),
        vec![pair("a", "running"), pair("up", "running")]
    );
}

#[test]
fn failed_creates_are_remembered_up_to_a_bound_oldest_forgotten_first() {
    let (mut r, queue, _snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    let total = creating::MAX_OUTCOMES + 20;
    for i in 0..total {
        let claim = format!("c{i}");
        ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec(&claim, GpuRequest::Ids(vec![0]))),
            reply,
        });
        let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
            panic!("no create queued for {claim}");
        };
        r.finish(Done::Created {
            ticket,
            claim_id: claim,
            result: Err(ContainerError::ImagePull("registry unreachable".into())),
        });
    }
    assert_eq!(r.outcomes.len(), creating::MAX_OUTCOMES);
    let get = |r: &mut Runner, id: &str| {
        ask(r, |reply| Request::Get {
            id: id.into(),
            reply,
        })
        .unwrap()
    };
    let newest = get(&mut r, &format!("c{}", total - 1)).unwrap();
    assert_eq!(newest.state, "failed");
    assert!(matches!(
        get(&mut r, "c0"),
        Err(ContainerError::NotFound(_))
    ));
    let kept = ask(&mut r, |reply| Request::List { reply })
        .unwrap()
        .unwrap();
    assert_eq!(kept.len(), creating::MAX_OUTCOMES);
}

#[test]
fn a_create_answers_from_docker_run_and_a_refresh_then_fills_in_dockers_details() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    let answer = ask_later(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
        panic!("no create queued");
    };
    let event = |id: &str, action: &str, name: &str| ContainerEvent {
        id: id.into(),
        action: action.into(),
        time_nano: 0,
        name: name.into(),
    };
    // The events of the container the create is making come before `docker run` returns: no
    // refresh for them (it would be older than the create's answer, and thrown away).
    r.on_event(event(A, "create", "utopia-a"));
    r.on_event(event(A, "start", "utopia-a"));
    assert!(
        queue.try_recv().is_err(),
        "a refresh for the container in creation"
    );
    // Another container's event still is refreshed.
    r.on_event(event(B, "start", "utopia-b"));
    assert!(matches!(queue.try_recv(), Ok(Work::Refresh { id, .. }) if id == B));
    // `docker run` printed the id: the answer has no docker times yet...
    r.finish(Done::Created {
        ticket,
        claim_id: "a".into(),
        result: Ok(view(A, "a", &[0], "running")),
    });
    let created = answer.try_recv().unwrap().unwrap();
    assert_eq!((created.id.as_str(), created.started_at), (A, None));
    assert_eq!(snapshot.containers()[0].pid, None);
    // ...and the refresh queued with it reads them, and is applied.
    let Ok(Work::Refresh { id, generation }) = queue.try_recv() else {
        panic!("no refresh after the create");
    };
    assert_eq!(id, A);
    let mut inspected = view(A, "a", &[0], "running");
    inspected.started_at = Some("2026-12-04T06:00:00Z".into());
    inspected.pid = Some(4242);
    r.finish(Done::Refreshed {
        id: A.into(),
        generation,
        result: Ok(Some(inspected)),
    });
    let shown = ask(&mut r, |reply| Request::Get {
        id: "a".into(),
        reply,
    })
    .unwrap()
    .unwrap();
    assert_eq!(shown.started_at.as_deref(), Some("2026-12-04T06:00:00Z"));
    assert_eq!(snapshot.containers()[0].pid, Some(4242));
    // Once the container is in the table, its events are refreshed again.
    r.on_event(event(A, "die", "utopia-a"));
    assert!(matches!(queue.try_recv(), Ok(Work::Refresh { id, .. }) if id == A));
}

#[test]
fn refreshes_of_one_container_run_one_at_a_time_so_the_latest_reading_wins() {
    let (mut r, queue, snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![view(A, "a", &[0], "running")]));
    let event = |action: &str| ContainerEvent {
        id: A.into(),
        action: action.into(),
        time_nano: 0,
        name: "utopia-a".into(),
    };
    // A refresh is in flight (it will read the container running) when the container dies:
    // the die event's refresh waits for it instead of running beside it.
    r.on_event(event("start"));
    let Ok(Work::Refresh { id, generation }) = queue.try_recv() else {
        panic!("no refresh queued");
    };
    assert_eq!(id, A);
    r.on_event(event("die"));
    r.on_event(event("kill"));
    assert!(
        queue.try_recv().is_err(),
        "a second refresh ran beside the first"
    );
    r.finish(Done::Refreshed {
        id: A.into(),
        generation,
        result: Ok(Some(view(A, "a", &[0], "running"))),
    });
    // The first applied, the one asked for meanwhile (once, for both events) runs now, and
    // what it reads is applied: it is not older than the first.
    let Ok(Work::Refresh { id, generation }) = queue.try_recv() else {
        panic!("the refresh asked for meanwhile was not queued");
    };
    assert_eq!(id, A);
    assert!(queue.try_recv().is_err());
    r.finish(Done::Refreshed {
        id: A.into(),
        generation,
        result: Ok(Some(view(A, "a", &[0], "exited"))),
    });
    assert_eq!(snapshot.containers()[0].state, "exited");
    // Nothing in flight: the next event is refreshed at once.
    r.on_event(event("start"));
    assert!(matches!(queue.try_recv(), Ok(Work::Refresh { id, .. }) if id == A));
}

#[test]
fn a_panicking_docker_job_still_answers_its_caller() {
    let (mut r, queue, _snapshot) = runner();
    r.apply_reconcile(0, Ok(vec![]));
    let answer = ask_later(&mut r, |reply| Request::Create {
        spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
        reply,
    });
    let Ok(work) = queue.try_recv() else {
        panic!("no create queued");
    };
    // The worker's code panics (a bug) while it runs the create.
    let report = run_job(work, |_| panic!("a docker worker bug"));
    let Done::Created {
        claim_id, result, ..
    } = &report
    else {
        panic!("not the create's report");
    };
    assert_eq!(claim_id, "a");
    assert!(matches!(result, Err(ContainerError::Timeout(_))));
    r.finish(report);
    // The caller hears at once, not never.
    assert!(matches!(
        answer.try_recv(),
        Ok(Err(ContainerError::Timeout(_)))
    ));
    // Every other kind of job answers its ticket too, and a job that does not panic is
    // answered by what it did.
    for work in [
        Work::Act {
            ticket: 7,
            id: A.into(),
            action: Action::Stop,
        },
        Work::Delete {
            ticket: 8,
            view: Box::new(view(A, "a", &[], "running")),
        },
        Work::Logs {
            ticket: 9,
            id: A.into(),
            tail: 1,
        },
        Work::Reconcile { generation: 3 },
        Work::Refresh {
            id: B.into(),
            generation: 4,
        },
    ] {
        match run_job(work, |_| panic!("a docker worker bug")) {
            Done::Acted { ticket, result, .. } => assert!(ticket == 7 && result.is_err()),
            Done::Deleted { ticket, result, .. } => assert!(ticket == 8 && result.is_err()),
            Done::Logs { ticket, result } => assert!(ticket == 9 && result.is_err()),
            Done::Reconciled {
                generation, result, ..
            } => assert!(generation == 3 && result.is_err()),
            Done::Refreshed {
                id,
                generation,
                result,
            } => assert!(id == B && generation == 4 && result.is_err()),
            _ => panic!("another report"),
        }
    }
    let fine = run_job(Work::Reconcile { generation: 5 }, |_| Done::Reconciled {
        generation: 5,
        result: Ok(vec![]),
        network: None,
    });
    assert!(matches!(fine, Done::Reconciled { result: Ok(_), .. }));
}
