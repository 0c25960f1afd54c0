//! Printing an error with its causes, each once (the causes sit in
//! `source()`, never repeated in the messages).

/// `error: cause: cause's cause`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
