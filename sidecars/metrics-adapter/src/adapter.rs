//! One scrape: every fetching collector within the time budget, StatsD from memory, the series
//! budget, and the adapter's own metrics, written in the negotiated format.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::{
    collect::{CollectError, Collector, Slot, SlotView},
    expose::{encode, Format, View},
    model::{Family, Kind, Sample},
    settings::Settings,
    statsd::Table,
};

/// Polls all futures concurrently until each is done.
async fn poll_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match std::pin::Pin::new(&mut *future).poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// The metrics adapter's state shared by scrapes.
#[derive(Debug)]
pub struct Adapter {
    slots: Vec<Slot>,
    statsd: Option<Arc<Mutex<Table>>>,
    budget: Duration,
    max_series: usize,
    /// Series left out by the budget, per slot (and StatsD last), summed over scrapes.
    dropped: Vec<AtomicU64>,
    scrapes: AtomicU64,
}

impl Adapter {
    /// The collectors of `settings`; StatsD's table is passed in, since its socket is bound apart.
    pub fn new(settings: &Settings, statsd: Option<Arc<Mutex<Table>>>) -> Adapter {
        let mut slots = Vec::new();
        if let Some(address) = settings.redis {
            slots.push(Slot::new(
                "redis".to_owned(),
                Collector::Redis(crate::collect::redis::RedisCollector::new(address)),
                settings.limits,
            ));
        }
        for target in &settings.json {
            slots.push(Slot::new(
                format!("json/{}", target.name),
                Collector::Json {
                    url: target.url.clone(),
                    mapping: target.mapping.clone(),
                },
                settings.limits,
            ));
        }
        for target in &settings.prometheus {
            slots.push(Slot::new(
                format!("prometheus/{}", target.name),
                Collector::Prometheus {
                    url: target.url.clone(),
                    relabel: target.relabel.clone(),
                },
                settings.limits,
            ));
        }
        let dropped = (0..=slots.len()).map(|_| AtomicU64::new(0)).collect();
        Adapter {
            slots,
            statsd,
            budget: settings.scrape_budget,
            max_series: settings.max_series,
            dropped,
            scrapes: AtomicU64::new(0),
        }
    }

    /// Answers one scrape into `out`.
    pub async fn scrape(&self, out: &mut String, format: Format) {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        // Every slot starts (or joins) its collection before any is awaited: their budgets run together.
        let views: Vec<SlotView> = poll_all(
            self.slots
                .iter()
                .map(|slot| Box::pin(slot.scrape(self.budget)))
                .collect(),
        )
        .await;
        let statsd = self.statsd.as_ref().map(|table| {
            let table = table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (table.families(), table.stats(), table.series_count())
        });

        let mut remaining = self.max_series;
        let mut written: Vec<View<'_>> = Vec::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let sources = views
            .iter()
            .map(|view| view.families.as_slice())
            .chain(statsd.as_ref().map(|(families, _, _)| families.as_slice()));
        for (source, families) in sources.enumerate() {
            // StatsD bounds itself when it takes lines; the budget is for what is fetched.
            let budgeted = source < self.slots.len();
            let mut dropped = 0u64;
            for family in families {
                let mut samples: &[Sample] = &family.samples;
                if budgeted {
                    let kept = samples.len().min(remaining);
                    dropped += (samples.len() - kept) as u64;
                    remaining -= kept;
                    samples = &samples[..kept];
                }
                if samples.is_empty() {
                    continue;
                }
                match by_name.get(family.name.as_str()) {
                    Some(&at) if written[at].family.kind == family.kind => written[at].parts.push(samples),
                    // Two collectors with one name and two types: the first keeps it.
                    Some(_) => dropped += samples.len() as u64,
                    None => {
                        by_name.insert(&family.name, written.len());
                        written.push(View {
                            family,
                            parts: vec![samples],
                        });
                    }
                }
            }
            if dropped > 0 {
                self.dropped[source].fetch_add(dropped, Ordering::Relaxed);
            }
        }
        let own = self.own_families(&views, statsd.as_ref().map(|(_, stats, n)| (*stats, *n)));
        for family in &own {
            if !by_name.contains_key(family.name.as_str()) {
                written.push(View::whole(family));
            }
        }
        encode(out, &written, format);
    }

    fn own_families(&self, views: &[SlotView], statsd: Option<(crate::statsd::Stats, usize)>) -> Vec<Family> {
        let collector = |name: &str| vec![("collector".to_owned(), name.to_owned())];
        let mut up = Family::new(
            "metrics_adapter_collector_up",
            "Whether the collector's last collection succeeded",
            Kind::Gauge,
        );
        let mut stale = Family::new(
            "metrics_adapter_collector_stale",
            "1 when the collector's values are the last ones kept, not fresh from this scrape",
            Kind::Gauge,
        );
        let mut duration = Family::new(
            "metrics_adapter_collection_duration_seconds",
            "Duration of the collector's last finished collection",
            Kind::Gauge,
        );
        let mut errors = Family::new(
            "metrics_adapter_collect_errors_total",
            "Failed collections, by collector and category",
            Kind::Counter,
        );
        let mut invalid = Family::new(
            "metrics_adapter_invalid_lines_total",
            "Lines of a passthrough target that did not parse",
            Kind::Counter,
        );
        let mut dropped = Family::new(
            "metrics_adapter_dropped_series_total",
            "Series left out of scrapes by the series budget or a type clash, summed over scrapes",
            Kind::Counter,
        );
        for (slot, view) in self.slots.iter().zip(views) {
            up.push(collector(&slot.name), if view.failed { 0.0 } else { 1.0 });
            stale.push(
                collector(&slot.name),
                if view.stale || view.failed { 1.0 } else { 0.0 },
            );
            duration.push(collector(&slot.name), view.last_duration.as_secs_f64());
            let (counts, invalid_lines) = slot.errors();
            for (category, count) in CollectError::CATEGORIES.iter().zip(counts) {
                if count > 0 {
                    let mut labels = collector(&slot.name);
                    labels.push(("category".to_owned(), (*category).to_owned()));
                    #[allow(clippy::cast_precision_loss)]
                    errors.push(labels, count as f64);
                }
            }
            if slot.name.starts_with("prometheus/") {
                #[allow(clippy::cast_precision_loss)]
                invalid.push(collector(&slot.name), invalid_lines as f64);
            }
        }
        let names = self
            .slots
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.statsd.is_some().then_some("statsd"));
        for (name, count) in names.zip(&self.dropped) {
            #[allow(clippy::cast_precision_loss)]
            dropped.push(collector(name), count.load(Ordering::Relaxed) as f64);
        }
        #[allow(clippy::cast_precision_loss)]
        let mut families = vec![
            up,
            stale,
            duration,
            errors,
            invalid,
            dropped,
            Family::single(
                "metrics_adapter_scrapes_total",
                "Scrapes answered",
                Kind::Counter,
                self.scrapes.load(Ordering::Relaxed) as f64,
            ),
        ];
        if let Some((stats, series)) = statsd {
            let mut lines = Family::new(
                "metrics_adapter_statsd_dropped_lines_total",
                "StatsD lines dropped, by reason",
                Kind::Counter,
            );
            for (reason, count) in [
                ("invalid", stats.invalid),
                ("over_budget", stats.over_budget),
                ("type_conflict", stats.type_conflicts),
            ] {
                #[allow(clippy::cast_precision_loss)]
                lines.push(vec![("reason".to_owned(), reason.to_owned())], count as f64);
            }
            #[allow(clippy::cast_precision_loss)]
            families.extend([
                Family::single(
                    "metrics_adapter_statsd_lines_total",
                    "StatsD lines received",
                    Kind::Counter,
                    stats.lines as f64,
                ),
                lines,
                Family::single(
                    "metrics_adapter_statsd_series",
                    "StatsD series held",
                    Kind::Gauge,
                    series as f64,
                ),
            ]);
        }
        families
    }
}
