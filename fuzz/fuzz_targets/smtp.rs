//! SMTP replies → `classify` / `accepted`. Input: a mode byte, then either the raw reply as it
//! comes off the wire (parsed by lettre, as the client does), or a reply code (2 bytes), a
//! "repeated 454" flag (1 byte) and the reply text. One class per reply, bounded errors.
#![no_main]

use notify_relay_engine::fuzzing::{smtp_accepted, smtp_classify, smtp_enhanced_code, Health, SmtpFailure, SmtpReply};
use libfuzzer_sys::fuzz_target;
use notify_relay_fuzz::{assert_one_class, take_u16, take_u8};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = take_u8(data);
    match mode % 3 {
        0 => {
            let wire = String::from_utf8_lossy(rest);
            let Ok(reply) = wire.parse::<SmtpReply>() else { return };
            if reply.is_positive() {
                assert_one_class(&smtp_accepted(&reply), &Health::Up);
            } else {
                let text = reply.message().collect::<Vec<_>>().join(" ");
                for repeated in [false, true] {
                    let (result, health) = smtp_classify(
                        &SmtpFailure::Reply { code: u16::from(reply.code()), text: text.clone() },
                        repeated,
                    );
                    assert_one_class(&result, &health);
                }
            }
        }
        1 => {
            let (code, rest) = take_u16(rest);
            let (repeated, text) = take_u8(rest);
            let text = String::from_utf8_lossy(text).into_owned();
            if let Some((class, _, _)) = smtp_enhanced_code(&text) {
                assert!(matches!(class, 2 | 4 | 5));
            }
            let (result, health) = smtp_classify(&SmtpFailure::Reply { code, text }, repeated % 2 == 1);
            assert_one_class(&result, &health);
        }
        _ => {
            let text = String::from_utf8_lossy(rest).into_owned();
            for failure in [
                SmtpFailure::Network(text.clone()),
                SmtpFailure::Timeout(Duration::from_millis(rest.len() as u64), text.clone()),
                SmtpFailure::Certificate(text.clone()),
                SmtpFailure::Setup(text.clone()),
                SmtpFailure::Message(text),
            ] {
                let (result, health) = smtp_classify(&failure, false);
                assert_one_class(&result, &health);
            }
        }
    }
});
