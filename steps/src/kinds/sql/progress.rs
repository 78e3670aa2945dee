//! `WITH STATS` progress from SQL Server's INFO messages, and a guard that
//! keeps the password out of tiberius' own tracing events.
//!
//! tiberius does not hand INFO tokens to its caller; it logs each one as a
//! `tracing` DEBUG event (target `tiberius...`). While a backup or restore
//! runs, its future is polled under a scoped subscriber that forwards every
//! call to the subscriber that was in effect (the engine's), and in addition
//! picks `N percent processed.` out of tiberius' events. Every statement
//! runs under the same scoped subscriber with the connection's password:
//! a tiberius event whose fields contain it (tiberius logs server error
//! texts, which can echo a statement) is dropped instead of forwarded.
//! Nothing is printed by this module itself.

use std::future::Future;
use std::sync::Arc;

use tracing::instrument::WithSubscriber;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber, span};

struct Tap {
    inner: Dispatch,
    on_percent: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    secret: String,
}

struct AllFields(String);

impl tracing::field::Visit for AllFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

fn is_tiberius_debug(m: &Metadata<'_>) -> bool {
    m.target().starts_with("tiberius") && *m.level() == Level::DEBUG
}

/// `"10 percent processed."` -> 10.
pub fn percent_of(message: &str) -> Option<u64> {
    let rest = message.trim();
    let (n, tail) = rest.split_once(' ')?;
    if !tail
        .trim_start()
        .to_lowercase()
        .starts_with("percent processed")
    {
        return None;
    }
    n.parse::<u64>().ok().filter(|p| *p <= 100)
}

struct MessageText(Option<String>);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_string());
        }
    }
}

impl Subscriber for Tap {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if is_tiberius_debug(m) || m.target().starts_with("tiberius") {
            Interest::always()
        } else {
            self.inner.register_callsite(m)
        }
    }
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        is_tiberius_debug(m) || self.inner.enabled(m)
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        // Unknown: the inner subscriber may want anything, and this one
        // wants DEBUG from tiberius.
        None
    }
    fn new_span(&self, a: &span::Attributes<'_>) -> span::Id {
        self.inner.new_span(a)
    }
    fn record(&self, s: &span::Id, v: &span::Record<'_>) {
        self.inner.record(s, v)
    }
    fn record_follows_from(&self, s: &span::Id, f: &span::Id) {
        self.inner.record_follows_from(s, f)
    }
    fn event(&self, e: &Event<'_>) {
        if let Some(on_percent) = &self.on_percent
            && is_tiberius_debug(e.metadata())
        {
            {
                let mut text = MessageText(None);
                e.record(&mut text);
                if let Some(p) = text.0.as_deref().and_then(percent_of) {
                    on_percent(p);
                }
            }
        }
        if !self.inner.enabled(e.metadata()) {
            return;
        }
        if !self.secret.is_empty() && e.metadata().target().starts_with("tiberius") {
            let mut all = AllFields(String::new());
            e.record(&mut all);
            if all.0.contains(&self.secret) {
                return;
            }
        }
        self.inner.event(e)
    }
    fn enter(&self, s: &span::Id) {
        self.inner.enter(s)
    }
    fn exit(&self, s: &span::Id) {
        self.inner.exit(s)
    }
    fn clone_span(&self, s: &span::Id) -> span::Id {
        self.inner.clone_span(s)
    }
    fn try_close(&self, s: span::Id) -> bool {
        self.inner.try_close(s)
    }
    // current_span keeps the default: tracing does not re-export
    // `span::Current`, so `Span::current()` reads as unknown inside a tapped
    // backup or restore.
}

/// Polls `fut` so that STATS messages arriving meanwhile reach
/// `on_percent` (if given) and no tiberius event carrying `secret` reaches
/// the subscriber in effect.
pub async fn tapped<F: Future>(
    fut: F,
    on_percent: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    secret: &str,
) -> F::Output {
    let inner = tracing::dispatcher::get_default(|d| d.clone());
    let tap = Dispatch::new(Tap {
        inner,
        on_percent,
        secret: secret.to_string(),
    });
    fut.with_subscriber(tap).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_lines_parse() {
        assert_eq!(percent_of("10 percent processed."), Some(10));
        assert_eq!(percent_of("100 percent processed."), Some(100));
        assert_eq!(percent_of("Changed database context to 'TM'."), None);
        assert_eq!(percent_of("BACKUP DATABASE successfully processed"), None);
    }
}
