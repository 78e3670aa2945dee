//! One notification: what happened, to which run and step, on which host,
//! and the commands that continue — rendered as plain text, plain JSON, a
//! Teams Adaptive Card or a Teams connector card, and as environment
//! variables for a `[notify] command`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::plan::{NotifyOn, WebhookFormat};

/// Longest reason carried by a message, in characters: Teams refuses
/// messages above 28 KB, and an operator reads the rest in `upshift log`.
pub const REASON_CHARS_MAX: usize = 2_000;

/// A notification, before it is rendered for a receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Why the operator is told.
    pub on: NotifyOn,
    /// One line, e.g. `TM upgrade: step bind waits for an operator`.
    pub title: String,
    /// The run id.
    pub run: String,
    /// The plan's name.
    pub plan: String,
    /// The step it is about, if one.
    pub step: Option<String>,
    /// The step's `host`, if the plan names one.
    pub step_host: Option<String>,
    /// The machine upshift runs on.
    pub host: String,
    /// Why, in the engine's words (the error, the instructions, the pause
    /// reason), redacted and cut to [`REASON_CHARS_MAX`].
    pub reason: String,
    /// How the run ended, for `ended`.
    pub outcome: Option<String>,
    /// Commands to paste, the one that continues first.
    pub next: Vec<String>,
    /// The journal folder.
    pub journal: String,
    /// Seq of the journaled event it is about.
    pub seq: u64,
    /// When that event was journaled.
    pub time: DateTime<Utc>,
}

/// Cuts `s` to `max` characters, saying so.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… (cut; `upshift log` has all of it)", &s[..at]),
    }
}

impl Message {
    /// Plain text, several lines (the `text` of the JSON format, the
    /// command's `UPSHIFT_NOTIFY_TEXT`).
    pub fn text(&self) -> String {
        let mut out = format!("upshift: {}\n", self.title);
        out.push_str(&format!("run:    {} (plan \"{}\")\n", self.run, self.plan));
        if let Some(step) = &self.step {
            match &self.step_host {
                Some(h) => out.push_str(&format!("step:   {step} (host {h})\n")),
                None => out.push_str(&format!("step:   {step}\n")),
            }
        }
        out.push_str(&format!("host:   {}\n", self.host));
        if !self.reason.is_empty() {
            out.push_str(&format!("reason: {}\n", self.reason));
        }
        for (i, c) in self.next.iter().enumerate() {
            let lead = if i == 0 { "to continue: " } else { "  or: " };
            out.push_str(&format!("{lead}{c}\n"));
        }
        out
    }

    /// Every field, plus `text` (`format = "json"`, and the command's stdin).
    pub fn json(&self) -> Value {
        json!({
            "source": "upshift",
            "event": self.on.word(),
            "title": self.title,
            "text": self.text(),
            "run": self.run,
            "plan": self.plan,
            "step": self.step,
            "step_host": self.step_host,
            "host": self.host,
            "reason": self.reason,
            "outcome": self.outcome,
            "continue": self.next,
            "journal": self.journal,
            "seq": self.seq,
            "time": self.time.to_rfc3339(),
        })
    }

    fn facts(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("Run", self.run.clone()), ("Plan", self.plan.clone())];
        if let Some(step) = &self.step {
            f.push(("Step", step.clone()));
        }
        if let Some(h) = &self.step_host {
            f.push(("Step host", h.clone()));
        }
        f.push(("Host", self.host.clone()));
        if let Some(o) = &self.outcome {
            f.push(("Outcome", o.clone()));
        }
        f
    }

    /// An Adaptive Card in the `message` envelope that Teams Workflows
    /// ("when a Teams webhook request is received") and incoming webhooks
    /// take. Free text goes in `TextRun`s, which Teams does not read as
    /// markdown, so a step id like `fe_bind_https` pastes as written.
    pub fn teams(&self) -> Value {
        let color = match self.on {
            NotifyOn::Failed => "Attention",
            NotifyOn::Ended if self.outcome.as_deref() == Some("succeeded") => "Good",
            NotifyOn::Ended => "Attention",
            NotifyOn::Waiting | NotifyOn::Reboot => "Warning",
        };
        let run = |text: &str, mono: bool| {
            let mut r = json!({ "type": "TextRun", "text": text });
            if mono {
                r["fontType"] = json!("Monospace");
            }
            json!({ "type": "RichTextBlock", "inlines": [r] })
        };
        let mut body = vec![
            json!({
                "type": "TextBlock",
                "text": escape_markdown(&format!("upshift: {}", self.title)),
                "weight": "Bolder",
                "size": "Medium",
                "color": color,
                "wrap": true,
            }),
            json!({
                "type": "FactSet",
                "facts": self.facts().into_iter()
                    .map(|(k, v)| json!({ "title": k, "value": escape_markdown(&v) }))
                    .collect::<Vec<_>>(),
            }),
        ];
        if !self.reason.is_empty() {
            body.push(run(&self.reason, false));
        }
        if !self.next.is_empty() {
            body.push(json!({
                "type": "TextBlock",
                "text": "To continue:",
                "weight": "Bolder",
                "wrap": true,
            }));
            for c in &self.next {
                body.push(run(c, true));
            }
        }
        json!({
            "type": "message",
            "summary": self.title,
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "msteams": { "width": "Full" },
                    "body": body,
                },
            }],
        })
    }

    /// The legacy connector card (`MessageCard`). Its text is markdown:
    /// commands go in code spans, the reason is escaped.
    pub fn teams_messagecard(&self) -> Value {
        let color = match self.on {
            NotifyOn::Ended if self.outcome.as_deref() == Some("succeeded") => "2E7D32",
            NotifyOn::Failed | NotifyOn::Ended => "C62828",
            NotifyOn::Waiting | NotifyOn::Reboot => "F9A825",
        };
        let mut sections = vec![json!({
            "facts": self.facts().into_iter()
                .map(|(k, v)| json!({ "name": k, "value": escape_markdown(&v) }))
                .collect::<Vec<_>>(),
            "text": escape_markdown(&self.reason),
        })];
        if !self.next.is_empty() {
            sections.push(json!({
                "title": "To continue",
                "text": self.next.iter()
                    .map(|c| format!("`{}`", c.replace('`', "'")))
                    .collect::<Vec<_>>()
                    .join("<br>"),
            }));
        }
        json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": format!("upshift: {}", self.title),
            "title": escape_markdown(&format!("upshift: {}", self.title)),
            "themeColor": color,
            "sections": sections,
        })
    }

    /// The webhook's body in `format`.
    pub fn body(&self, format: WebhookFormat) -> Vec<u8> {
        let v = match format {
            WebhookFormat::Teams => self.teams(),
            WebhookFormat::TeamsMessageCard => self.teams_messagecard(),
            WebhookFormat::Json => self.json(),
        };
        serde_json::to_vec(&v).expect("a JSON value serializes")
    }

    /// `UPSHIFT_NOTIFY_*` variables for a `[notify] command`.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("EVENT", self.on.word().to_string()),
            ("TITLE", self.title.clone()),
            ("TEXT", self.text()),
            ("RUN", self.run.clone()),
            ("PLAN", self.plan.clone()),
            ("STEP", self.step.clone().unwrap_or_default()),
            ("STEP_HOST", self.step_host.clone().unwrap_or_default()),
            ("HOST", self.host.clone()),
            ("REASON", self.reason.clone()),
            ("OUTCOME", self.outcome.clone().unwrap_or_default()),
            ("CONTINUE", self.next.first().cloned().unwrap_or_default()),
            ("JOURNAL", self.journal.clone()),
        ];
        v.drain(..)
            .map(|(k, val)| (format!("UPSHIFT_NOTIFY_{k}"), val))
            .collect()
    }
}

/// Teams reads a TextBlock, a fact and a connector card's text as
/// markdown: escape what would change it (an id like `a_b_c` would lose
/// its underscores to italics).
fn escape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '`' | '[' | ']' | '#' | '<' | '>' | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            on: NotifyOn::Waiting,
            title: "TM upgrade: step fe_bind_https waits for an operator".into(),
            run: "0190a1b2-0000-7000-8000-000000000001".into(),
            plan: "TM upgrade".into(),
            step: Some("fe_bind_https".into()),
            step_host: Some("tm-fe01".into()),
            host: "jump01".into(),
            reason: "bind the certificate in IIS, then approve".into(),
            outcome: None,
            next: vec![
                "upshift approve 0190a1b2-0000-7000-8000-000000000001 fe_bind_https --journal /var/lib/upshift".into(),
            ],
            journal: "/var/lib/upshift".into(),
            seq: 41,
            time: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn the_text_names_run_step_host_reason_and_the_command() {
        let t = sample().text();
        for part in [
            "0190a1b2-0000-7000-8000-000000000001",
            "fe_bind_https (host tm-fe01)",
            "host:   jump01",
            "bind the certificate in IIS",
            "to continue: upshift approve 0190a1b2-0000-7000-8000-000000000001 fe_bind_https --journal /var/lib/upshift",
        ] {
            assert!(t.contains(part), "{part:?} missing from:\n{t}");
        }
    }

    #[test]
    fn the_teams_card_keeps_the_command_verbatim_outside_markdown() {
        let v = sample().teams();
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(att["content"]["type"], "AdaptiveCard");
        let body = att["content"]["body"].as_array().unwrap();
        let runs: Vec<&str> = body
            .iter()
            .filter(|b| b["type"] == "RichTextBlock")
            .map(|b| b["inlines"][0]["text"].as_str().unwrap())
            .collect();
        assert!(runs.contains(&sample().next[0].as_str()), "{runs:?}");
        // In markdown blocks the underscores are escaped.
        assert!(
            body[0]["text"]
                .as_str()
                .unwrap()
                .contains("fe\\_bind\\_https")
        );
    }

    #[test]
    fn the_messagecard_has_summary_and_code_spans() {
        let v = sample().teams_messagecard();
        assert_eq!(v["@type"], "MessageCard");
        assert!(
            v["summary"]
                .as_str()
                .unwrap()
                .contains("waits for an operator")
        );
        assert!(
            v["sections"][1]["text"]
                .as_str()
                .unwrap()
                .starts_with("`upshift approve ")
        );
    }

    #[test]
    fn reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(REASON_CHARS_MAX + 10);
        let c = cut(&long, REASON_CHARS_MAX);
        assert!(c.starts_with(&"é".repeat(REASON_CHARS_MAX)));
        assert!(c.ends_with("all of it)"));
        assert_eq!(cut("short", 10), "short");
    }
}
