//! The route mode an attach gets: the device's config, the VMM's request,
//! its irqchip and what this host's KVM can do.

use crate::config::{DeviceConfig, ModePolicy};
use crate::control::proto::{Capabilities, ErrorCode, ModeRequest, Reply};
use crate::route::{Irqchip, Mode};

/// Picks the route mode for an attach, with the reason.
pub fn choose_mode(
    dev: &DeviceConfig,
    want: ModeRequest,
    irqchip: Irqchip,
    caps: &Capabilities,
) -> Result<(Mode, String), Reply> {
    let refuse = |m: String| Reply::error(ErrorCode::ModeUnavailable, format!("{}: {m}", dev.name));
    match (dev.mode, want) {
        (ModePolicy::Relay, ModeRequest::Direct) => {
            return Err(refuse("the device's config says mode = \"relay\"; ask for auto or relay, or change the config".into()))
        }
        (ModePolicy::Direct, ModeRequest::Relay) => {
            return Err(refuse("the device's config says mode = \"direct\"; ask for auto or direct, or change the config".into()))
        }
        (ModePolicy::Relay, _) => return Ok((Mode::Relay, "the device's config says mode = \"relay\"".into())),
        (_, ModeRequest::Relay) => return Ok((Mode::Relay, "the VMM asked for relay".into())),
        _ => {}
    }
    match irqchip {
        Irqchip::Kernel if caps.irqfd_resample => Ok((
            Mode::Direct,
            "in-kernel irqchip with resampling irqfds: VFIO's trigger is the VMM's irqfd and its unmask the resamplefd, so no userspace is on the hot path".into(),
        )),
        Irqchip::Kernel => {
            let why = "this host's KVM lacks KVM_CAP_IRQFD_RESAMPLE, so KVM cannot signal the guest's EOI to VFIO";
            if want == ModeRequest::Direct || dev.mode == ModePolicy::Direct {
                Err(refuse(format!("{why}; direct mode is impossible here")))
            } else {
                Ok((Mode::Relay, format!("{why}; intxd relays instead")))
            }
        }
        Irqchip::Split | Irqchip::User => Ok((
            Mode::Direct,
            format!("{irqchip} irqchip: the VMM's own interrupt controller asserts on the irq eventfd and signals the resample eventfd at EOI, so VFIO can use them directly"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dev(mode: ModePolicy) -> DeviceConfig {
        let mut cfg =
            crate::config::load_str(std::path::Path::new("test.toml"), crate::config::BUILTIN)
                .unwrap()
                .devices
                .remove(0);
        cfg.mode = mode;
        cfg
    }

    fn caps(irqfd_resample: bool) -> Capabilities {
        Capabilities {
            irqfd_resample,
            ..Capabilities::default()
        }
    }

    fn refused(r: Result<(Mode, String), Reply>) -> String {
        match r {
            Err(Reply::Error { error }) => {
                assert_eq!(error.code, ErrorCode::ModeUnavailable);
                error.message
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_kernel_irqchip_with_resampling_goes_direct_on_auto() {
        let (m, why) = choose_mode(
            &dev(ModePolicy::Auto),
            ModeRequest::Auto,
            Irqchip::Kernel,
            &caps(true),
        )
        .unwrap();
        assert_eq!(m, Mode::Direct);
        assert!(why.contains("resamplefd"), "{why}");
    }

    #[test]
    fn without_irqfd_resample_auto_falls_back_to_the_relay_and_says_why() {
        let (m, why) = choose_mode(
            &dev(ModePolicy::Auto),
            ModeRequest::Auto,
            Irqchip::Kernel,
            &caps(false),
        )
        .unwrap();
        assert_eq!(m, Mode::Relay);
        assert!(
            why.contains("KVM_CAP_IRQFD_RESAMPLE") && why.contains("relays"),
            "{why}"
        );
    }

    #[test]
    fn without_irqfd_resample_direct_is_refused_when_asked_or_configured() {
        let asked = refused(choose_mode(
            &dev(ModePolicy::Auto),
            ModeRequest::Direct,
            Irqchip::Kernel,
            &caps(false),
        ));
        let configured = refused(choose_mode(
            &dev(ModePolicy::Direct),
            ModeRequest::Auto,
            Irqchip::Kernel,
            &caps(false),
        ));
        for m in [asked, configured] {
            assert!(
                m.contains("KVM_CAP_IRQFD_RESAMPLE") && m.contains("impossible"),
                "{m}"
            );
        }
    }

    #[test]
    fn a_userspace_or_split_irqchip_goes_direct_even_without_irqfd_resample() {
        for chip in [Irqchip::User, Irqchip::Split] {
            let (m, why) = choose_mode(
                &dev(ModePolicy::Auto),
                ModeRequest::Auto,
                chip,
                &caps(false),
            )
            .unwrap();
            assert_eq!(m, Mode::Direct);
            assert!(why.starts_with(&chip.to_string()), "{why}");
        }
    }

    #[test]
    fn the_config_policy_wins_over_the_request() {
        let d = dev(ModePolicy::Relay);
        let (m, why) = choose_mode(&d, ModeRequest::Auto, Irqchip::Kernel, &caps(true)).unwrap();
        assert_eq!((m, why.contains("config")), (Mode::Relay, true));
        let m = refused(choose_mode(
            &d,
            ModeRequest::Direct,
            Irqchip::Kernel,
            &caps(true),
        ));
        assert!(m.contains("mode = \"relay\""), "{m}");
        let m = refused(choose_mode(
            &dev(ModePolicy::Direct),
            ModeRequest::Relay,
            Irqchip::User,
            &caps(true),
        ));
        assert!(m.contains("mode = \"direct\""), "{m}");
    }

    #[test]
    fn a_vmm_may_ask_for_the_relay() {
        let (m, why) = choose_mode(
            &dev(ModePolicy::Auto),
            ModeRequest::Relay,
            Irqchip::Kernel,
            &caps(true),
        )
        .unwrap();
        assert_eq!(m, Mode::Relay);
        assert!(why.contains("asked"), "{why}");
    }
}
