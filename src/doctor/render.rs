//! The table `intxd doctor` prints: one row per finding, its fixes below.

use super::Finding;

/// Width of the finding column before a line is wrapped.
const WRAP: usize = 84;

/// One row per finding (subject, check, status, what was found, wrapped),
/// each fix on lines of its own below, prefixed `fix:`.
pub(super) fn table(findings: &[Finding]) -> String {
    let sw = findings
        .iter()
        .map(|f| f.subject.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let cw = findings
        .iter()
        .map(|f| f.check.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let indent = " ".repeat(sw + cw + 12);
    let mut out = format!(
        "{:<sw$}  {:<cw$}  {:<6}  FINDING\n",
        "SUBJECT", "CHECK", "STATUS"
    );
    for f in findings {
        let mut lines = wrap(&f.found, WRAP).into_iter();
        let first = lines.next().unwrap_or_default();
        out.push_str(&format!(
            "{:<sw$}  {:<cw$}  {:<6}  {first}\n",
            f.subject,
            f.check,
            f.status.to_string()
        ));
        for l in lines {
            out.push_str(&format!("{indent}{l}\n"));
        }
        for fix in &f.fixes {
            for (i, l) in wrap(fix, WRAP - 5).into_iter().enumerate() {
                let lead = if i == 0 { "fix: " } else { "     " };
                out.push_str(&format!("{indent}{lead}{l}\n"));
            }
        }
    }
    out
}

/// `text` cut at spaces into lines of at most `width` characters (a longer
/// word stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}
