//! A reprocess staged for review and its promotion, asked for as batch jobs and run by the
//! [`JobRunner`] the scheduler drives: nothing goes live before the promotion, the staged
//! hours equal a plain fold under the new spec, and the sweep keeps them.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_connectors::batch_views::BatchViews;
use tally_connectors::jobs::JobStore;
use tally_connectors::testing::{assert_states_agree, sample_demo_events};
use tally_connectors::view_store::ViewKey;
use tally_model::job::{BatchJob, JobStatus, JobWork};
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{AggregateState, Catalog};

use super::{base, demo, files_under, rig};
use crate::jobs::JobRunner;
use crate::recompute::{Recompute, RunRequest};
use crate::telemetry::BatchMetrics;

/// The demo catalog with its first view grouped by `source` as well: a fix to review.
fn fixed() -> (Catalog, String) {
    let mut fixed = demo();
    let view = &mut fixed.tenants.get_mut("demo").unwrap().views[0];
    view.dimensions.push("source".into());
    let name = view.name.clone();
    (fixed, name)
}

/// Submits `work` for the demo view `name` and runs it as the scheduler would.
fn run_job(
    runtime: &tokio::runtime::Runtime,
    runner: &JobRunner,
    jobs: &JobStore,
    name: &str,
    work: JobWork,
) -> BatchJob {
    runtime.block_on(async {
        let job = jobs.submit("demo", name, work, now_millis()).await.unwrap();
        let next = runner
            .claim_next()
            .await
            .unwrap()
            .expect("the job is queued");
        assert_eq!(next.id, job.id);
        runner.run(next).await;
        assert!(
            runner.claim_next().await.unwrap().is_none(),
            "nothing else queued"
        );
        jobs.get(&job.id).await.unwrap().unwrap()
    })
}

#[test]
fn a_staged_reprocess_goes_live_only_when_promoted() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    let before = rig.manifest();
    let (fixed, name) = fixed();
    let metrics = BatchMetrics::register(&mut Default::default());
    let recompute = Arc::new(Recompute::new(
        rig.store.clone(),
        Arc::new(fixed.clone()),
        0,
        metrics,
    ));
    let runner = JobRunner::new(recompute);
    let jobs = JobStore::new(rig.store.clone());
    let first_hour = base().div_euclid(HOUR_MS) * HOUR_MS;
    let range = first_hour..first_hour + 2 * HOUR_MS;

    let staged = run_job(
        &rig.runtime,
        &runner,
        &jobs,
        &name,
        JobWork::Reprocess {
            from: range.start,
            to: range.end,
            logic_version: 2,
        },
    );
    let JobStatus::Done { summary, .. } = &staged.status else {
        panic!("the reprocess failed: {staged:?}");
    };
    assert!(
        summary.starts_with("staged 2 hour(s) of logic version 2"),
        "{summary}"
    );

    // Nothing live changed: same hours, same objects, same current version.
    let after = rig.manifest();
    let (old, new) = (
        before.view("demo", &name).unwrap(),
        after.view("demo", &name).unwrap(),
    );
    assert_eq!(new.hours, old.hours);
    assert_eq!(new.current_version, 1);
    assert_eq!(new.staged_versions(), BTreeMap::from([(2, 2)]));
    assert!(new.staged.keys().all(|hour| range.contains(hour)));

    // Read as version 2, the range equals a plain fold under the fixed spec.
    let views = BatchViews::new(rig.store.clone());
    let read = views.read_hours(&after, "demo", &name, range.clone(), Some(2));
    let hours = rig.runtime.block_on(read).unwrap();
    assert_eq!(hours.len(), 2);
    let mut states = BTreeMap::new();
    for hour in hours {
        assert_eq!(hour.logic_version, 2);
        for (bucket, dimensions, state) in hour.rows.iter() {
            let key = ViewKey {
                tenant: "demo".into(),
                view: name.clone(),
                bucket: *bucket,
                dimensions: dimensions.clone(),
            };
            states.insert(key, state.clone());
        }
    }
    let in_range = |states: BTreeMap<ViewKey, AggregateState>| -> BTreeMap<_, _> {
        (states.into_iter())
            .filter(|(key, _)| key.view == name && range.contains(&key.bucket))
            .collect()
    };
    assert_states_agree(&states, &in_range(rig.expected(&fixed)));

    // The sweep keeps staged objects however old they are: a promotion will name them.
    let objects_dir = rig._dir.path().join("objects");
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for file in files_under(&objects_dir) {
        let file = std::fs::File::options().write(true).open(file).unwrap();
        file.set_modified(long_ago).unwrap();
    }
    let sweep = crate::sweep::sweep(rig.store.clone(), std::time::Duration::from_secs(3600));
    rig.runtime.block_on(sweep).unwrap();
    for entry in new.staged.values() {
        let object = entry.object.as_ref().unwrap();
        assert!(objects_dir.join(object).is_file(), "{object} was swept");
    }

    // The scheduled run under the fixed spec adopts version 2 rather than registering a 3.
    rig.recompute(&fixed, 0, RunRequest::default());
    assert_eq!(
        rig.manifest().view("demo", &name).unwrap().versions.len(),
        2
    );

    let promoted = run_job(
        &rig.runtime,
        &runner,
        &jobs,
        &name,
        JobWork::Promote { logic_version: 2 },
    );
    assert!(
        matches!(promoted.status, JobStatus::Done { .. }),
        "{promoted:?}"
    );
    let live = rig.manifest();
    let live = live.view("demo", &name).unwrap();
    assert!(live.staged.is_empty());
    for (hour, entry) in &live.hours {
        let version = if range.contains(hour) { 2 } else { 1 };
        assert_eq!(entry.logic_version, version, "hour {hour}");
    }
    assert_states_agree(&in_range(rig.batch_states(&fixed)), &states);

    // Promoting again has nothing to promote, and says so.
    let again = run_job(
        &rig.runtime,
        &runner,
        &jobs,
        &name,
        JobWork::Promote { logic_version: 2 },
    );
    let JobStatus::Failed { error, .. } = &again.status else {
        panic!("a second promotion succeeded: {again:?}");
    };
    assert!(error.contains("no staged hour"), "{error}");
}

/// Two schedulers over one store (one started by mistake): each run of a job goes to one of
/// them, a job whose runner is alive is left to it, and one whose runner went silent is
/// taken over as the next attempt.
#[test]
fn a_job_is_run_by_one_scheduler_and_taken_over_only_once_abandoned() {
    let rig = rig();
    let runner = || {
        let metrics = BatchMetrics::register(&mut Default::default());
        JobRunner::new(Arc::new(Recompute::new(
            rig.store.clone(),
            Arc::new(demo()),
            0,
            metrics,
        )))
    };
    let (first, second) = (runner(), runner());
    let jobs = JobStore::new(rig.store.clone());
    // A job's first claim, made as long ago as its runner may be silent, twice.
    let age_claim = |id: &str| {
        let claim = rig._dir.path().join(format!("objects/job-claims/{id}/1"));
        let long_ago = std::time::SystemTime::now() - crate::jobs::ABANDONED_AFTER * 2;
        let file = std::fs::File::options().write(true).open(claim).unwrap();
        file.set_modified(long_ago).unwrap();
    };
    let attempt = |job: &BatchJob| match job.status {
        JobStatus::Running { attempt, .. } => attempt,
        ref other => panic!("not running: {other:?}"),
    };
    rig.runtime.block_on(async {
        let work = JobWork::Promote { logic_version: 2 };
        let job = jobs.submit("demo", "v", work, now_millis()).await.unwrap();
        let claimed = first.claim_next().await.unwrap().expect("a queued job");
        assert_eq!(
            (claimed.id.as_str(), attempt(&claimed)),
            (job.id.as_str(), 1)
        );
        assert_eq!(
            second.claim_next().await.unwrap(),
            None,
            "its runner is alive"
        );

        // Both read it queued at once: the first claim wins. If the winner stops before it
        // records the run, its claim ages, and the job is run after the grace.
        let racing = jobs
            .submit("demo", "v", work_again(), now_millis())
            .await
            .unwrap();
        assert!(jobs.claim(&racing.id, 1).await.unwrap());
        assert_eq!(
            second.claim_next().await.unwrap(),
            None,
            "claimed elsewhere"
        );
        age_claim(&racing.id);
        let retaken = second
            .claim_next()
            .await
            .unwrap()
            .expect("a job claimed long ago");
        assert_eq!(
            (retaken.id.as_str(), attempt(&retaken)),
            (racing.id.as_str(), 2)
        );

        // The first runner goes silent: after the grace its job is the second's, once.
        let mut silent = jobs.get(&job.id).await.unwrap().unwrap();
        silent.status = JobStatus::Running {
            hours_planned: None,
            hours_done: 0,
            raw_rows: 0,
            attempt: 1,
            alive_at: now_millis() - crate::jobs::ABANDONED_AFTER.as_millis() as i64 - 1,
        };
        jobs.update(&silent).await.unwrap();
        assert_eq!(
            second.claim_next().await.unwrap(),
            None,
            "a claim as fresh as its run's start"
        );
        age_claim(&job.id);
        let taken = second
            .claim_next()
            .await
            .unwrap()
            .expect("an abandoned job");
        assert_eq!((taken.id.as_str(), attempt(&taken)), (job.id.as_str(), 2));
        assert_eq!(first.claim_next().await.unwrap(), None);

        // Both find a job waiting at the same moment: one runs it, the other's claim fails.
        let third = jobs
            .submit("demo", "v", work_again(), now_millis())
            .await
            .unwrap();
        let (mut seen_by_first, mut seen_by_second) = (
            first.waiting().await.unwrap(),
            second.waiting().await.unwrap(),
        );
        assert_eq!(seen_by_first.len(), 1);
        assert_eq!(seen_by_second.len(), 1);
        let (job, attempt) = seen_by_first.remove(0);
        assert_eq!((job.id.as_str(), attempt), (third.id.as_str(), 1));
        assert!(first.claim(job, attempt).await.unwrap().is_some());
        let (job, attempt) = seen_by_second.remove(0);
        assert_eq!(
            second.claim(job, attempt).await.unwrap(),
            None,
            "claimed twice"
        );
    });
}

fn work_again() -> JobWork {
    JobWork::Promote { logic_version: 3 }
}
