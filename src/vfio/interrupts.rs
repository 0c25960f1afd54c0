//! What `/proc/interrupts` says about a host IRQ line: its count, summed over
//! CPUs, and the handlers (actions) requested on it.
//!
//! A row is the IRQ number, one count per CPU, the chip name, the hardware
//! IRQ with its flow type, then the actions separated by `", "`; the kernel
//! puts at least two spaces between those fields (`show_interrupts`):
//!
//! ```text
//!            CPU0       CPU1
//!  21:       4711          0  IR-IO-APIC   21-fasteoi   vfio-intx(0000:00:01.0)
//! ```

/// One row of `/proc/interrupts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqRow {
    /// The row's label: an IRQ number (`"21"`) or a name (`"NMI"`).
    pub label: String,
    /// The per-CPU counts, summed.
    pub total: u64,
    /// The actions (handler names); empty when nothing requested the line.
    pub actions: Vec<String>,
}

/// Parses the whole file. Rows that do not parse are skipped.
pub fn parse(text: &str) -> Vec<IrqRow> {
    let mut lines = text.lines();
    let ncpu = lines
        .next()
        .map(|h| {
            h.split_whitespace()
                .filter(|t| t.starts_with("CPU"))
                .count()
        })
        .unwrap_or(0);
    lines.filter_map(|l| parse_row(l, ncpu)).collect()
}

fn parse_row(line: &str, ncpu: usize) -> Option<IrqRow> {
    let (label, mut rest) = line.split_once(':')?;
    let label = label.trim().to_string();
    let mut total = 0u64;
    for _ in 0..ncpu {
        let trimmed = rest.trim_start();
        let end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        if end == 0 {
            // Rows such as `ERR:` have one count, not one per CPU.
            break;
        }
        total = total.saturating_add(trimmed[..end].parse::<u64>().ok()?);
        rest = &trimmed[end..];
    }
    // After the counts: the chip name, then the hardware IRQ glued to the
    // flow type (`21-fasteoi`, `-edge` without an IRQ domain; `Level` or
    // `Edge` where the kernel shows the trigger), then the actions. Action
    // names may hold spaces (`PCIe PME`), so they are cut at `", "` only.
    let mut actions = Vec::new();
    let mut seen_chip = false;
    for (start, tok) in tokens(rest) {
        if seen_chip && is_flow_type(tok) {
            actions = rest[start + tok.len()..]
                .split(", ")
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            break;
        }
        seen_chip = true;
    }
    Some(IrqRow {
        label,
        total,
        actions,
    })
}

/// Whitespace-separated tokens with their byte offsets.
fn tokens(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.split_whitespace()
        .map(move |t| (t.as_ptr() as usize - s.as_ptr() as usize, t))
}

/// `21-fasteoi`, `0-edge`, `-edge`, `Level`, `Edge`.
fn is_flow_type(tok: &str) -> bool {
    if tok == "Level" || tok == "Edge" {
        return true;
    }
    match tok.split_once('-') {
        Some((irq, kind)) => {
            irq.bytes().all(|b| b.is_ascii_digit())
                && !kind.is_empty()
                && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    }
}

/// The name vfio-pci gives its INTx handler for the function `bdf`.
pub fn vfio_intx_action(bdf: &str) -> String {
    format!("vfio-intx({bdf})")
}

/// The row whose actions include `action`.
pub fn row_with_action<'a>(rows: &'a [IrqRow], action: &str) -> Option<&'a IrqRow> {
    rows.iter().find(|r| r.actions.iter().any(|a| a == action))
}

/// The row of IRQ number `irq`.
pub fn row_of_irq(rows: &[IrqRow], irq: u32) -> Option<&IrqRow> {
    let label = irq.to_string();
    rows.iter().find(|r| r.label == label)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "           CPU0       CPU1       \n  \
  0:         44          0   IO-APIC   2-edge      timer\n \
 21:       4711         12  IR-IO-APIC   21-fasteoi   vfio-intx(0000:00:01.0)\n \
 22:          3          4  IR-IO-APIC   22-fasteoi   ehci_hcd:usb1, vfio-intx(0000:00:02.0)\n \
 23:          0          0  IR-IO-APIC   23-fasteoi\n \
 28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config\n \
 29:          5          0  PCI-MSI 458752-edge      PCIe PME, pciehp\n\
NMI:          0          0   Non-maskable interrupts\n\
ERR:          0\n";

    #[test]
    fn counts_are_summed_over_cpus() {
        let rows = parse(SAMPLE);
        let r = row_with_action(&rows, "vfio-intx(0000:00:01.0)").expect("row");
        assert_eq!(r.label, "21");
        assert_eq!(r.total, 4723);
        assert_eq!(r.actions, vec!["vfio-intx(0000:00:01.0)"]);
    }

    #[test]
    fn a_shared_line_lists_every_action() {
        let rows = parse(SAMPLE);
        let r = row_of_irq(&rows, 22).expect("row");
        assert_eq!(r.actions, vec!["ehci_hcd:usb1", "vfio-intx(0000:00:02.0)"]);
        assert_eq!(r.total, 7);
    }

    #[test]
    fn a_line_nobody_requested_has_no_actions() {
        let rows = parse(SAMPLE);
        assert!(row_of_irq(&rows, 23).expect("row").actions.is_empty());
    }

    #[test]
    fn msi_rows_and_named_rows_parse() {
        let rows = parse(SAMPLE);
        assert_eq!(
            row_of_irq(&rows, 28).expect("row").actions,
            vec!["virtio0-config"]
        );
        let err = rows.iter().find(|r| r.label == "ERR").expect("ERR row");
        assert_eq!(err.total, 0);
        assert_eq!(row_of_irq(&rows, 0).expect("row").actions, vec!["timer"]);
        assert_eq!(
            row_of_irq(&rows, 29).expect("row").actions,
            vec!["PCIe PME", "pciehp"]
        );
    }
}
