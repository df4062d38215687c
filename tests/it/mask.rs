//! Secret masking through the public API: one-shot, streamed in every possible split, encoded
//! forms, short secrets, the secret-name policy, and a property test tying streaming to one-shot.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use opschain_runner::mask::{MaskStream, Masker, SecretNames, ShortSecret, DEFAULT_SECRET_PATTERNS, MASK, MIN_SECRET_LEN};
use proptest::prelude::*;

/// Feeds `chunks` to a fresh stream of `masker`, flushes at the end, and returns all output.
fn stream_chunks(masker: &Masker, chunks: &[&[u8]]) -> Vec<u8> {
    let mut stream = masker.stream();
    let mut out = Vec::new();
    for chunk in chunks {
        stream.push(chunk, &mut out);
    }
    stream.flush(&mut out);
    assert_eq!(stream.pending(), 0, "flush must release everything");
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn one_shot_masks_every_occurrence_and_borrows_when_clean() {
    let masker = Masker::new(["hunter22", "s3cret-token"]);
    assert_eq!(masker.mask("pw=hunter22, t=s3cret-token, again hunter22"), "pw=****, t=****, again ****");
    assert!(matches!(masker.mask("nothing here"), std::borrow::Cow::Borrowed(_)));
    assert_eq!(masker.secret_count(), 2);
    assert_eq!(masker.mask("hunter22"), MASK);
}

#[test]
fn split_at_every_byte_across_two_pushes() {
    let masker = Masker::new(["hunter2!x"]);
    let input = b"before hunter2!x after";
    for i in 0..=input.len() {
        let out = stream_chunks(&masker, &[&input[..i], &input[i..]]);
        assert_eq!(out, b"before **** after", "split at {i}");
    }
}

#[test]
fn split_at_every_pair_of_bytes_across_three_pushes() {
    let masker = Masker::new(["hunter2!x"]);
    let input = b"a hunter2!x b hunter2!x";
    for i in 0..=input.len() {
        for j in i..=input.len() {
            let out = stream_chunks(&masker, &[&input[..i], &input[i..j], &input[j..]]);
            assert_eq!(out, b"a **** b ****", "split at {i} and {j}");
        }
    }
}

#[test]
fn long_secret_split_anywhere_after_a_lookalike_start() {
    // Longer than the heads `hold_start` searches for, and preceded by a false start.
    let secret = "-----BEGIN KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-----END KEY-----";
    let masker = Masker::new([secret]);
    let input = format!("-----BEGIN KEY-----MIIEvQ oops\n{secret}\n");
    let input = input.as_bytes();
    for i in 0..=input.len() {
        let out = stream_chunks(&masker, &[&input[..i], &input[i..]]);
        assert_eq!(out, b"-----BEGIN KEY-----MIIEvQ oops\n****\n", "split at {i}");
    }
    let mut stream = masker.stream();
    let mut out = Vec::new();
    stream.push(&input[..input.len() - 5], &mut out);
    assert_eq!(stream.pending(), secret.len() - 4);
}

#[test]
fn byte_by_byte_pushes_mask_like_one_shot() {
    let masker = Masker::new(["abcd", "abcdefgh", "hunter22"]);
    let input = b"xabcdefghy abcdx hunter22hunter22 abcdefg";
    let expected: &[u8] = b"x****y ****x ******** ****efg";
    let chunks: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(stream_chunks(&masker, &chunks), expected);
    assert_eq!(masker.mask_bytes(input).as_ref(), expected);
}

#[test]
fn longest_overlapping_secret_wins_without_leaking_its_tail() {
    let masker = Masker::new(["abcd", "abcdefgh"]);
    assert_eq!(masker.mask("abcdefgh"), "****");
    assert_eq!(masker.mask("abcdefg"), "****efg");
    assert_eq!(masker.mask("abcd"), "****");
    let input = b"abcdefgh";
    for i in 0..=input.len() {
        assert_eq!(stream_chunks(&masker, &[&input[..i], &input[i..]]), b"****", "split at {i}");
    }
}

#[test]
fn three_byte_secrets_overlap_like_longer_ones_when_allowed() {
    let masker = Masker::builder().min_secret_len(3).build(["abc", "abcdef"]).expect("builds");
    assert_eq!(masker.mask("abcdef"), "****");
    assert_eq!(stream_chunks(&masker, &[b"abc", b"def"]), b"****");
    assert_eq!(stream_chunks(&masker, &[b"abc", b"de"]), b"****de");
}

#[test]
fn a_later_longer_secret_beats_an_earlier_short_one_inside_it() {
    // "cdef" would match first in a naive left-to-right scan of "abcdefgh" fed as "abcdef";
    // "abcdefgh" starts earlier and must win once its end arrives.
    let masker = Masker::new(["cdef", "abcdefgh"]);
    assert_eq!(stream_chunks(&masker, &[b"abcdef", b"gh"]), b"****");
    assert_eq!(stream_chunks(&masker, &[b"abcdef", b"gx"]), b"ab****gx");
}

#[test]
fn a_match_after_one_that_ran_into_the_held_back_tail_is_masked() {
    // Fed "abcdefgh", the tail "cdefgh" could still grow into "cdefghij", so it is held; the
    // match "abcd" runs into it, and "efgh" after that match must then be masked, not released.
    let masker = Masker::new(["abcd", "cdefghij", "efgh"]);
    assert_eq!(stream_chunks(&masker, &[b"abcdefgh", b"x"]), b"********x");
    assert_eq!(masker.mask("abcdefghx"), "********x");
}

#[test]
fn base64_forms_are_masked_padded_and_unpadded() {
    let secret = "pa>>ss?";
    let masker = Masker::new([secret]);
    for form in ["cGE+PnNzPw==", "cGE+PnNzPw", "cGE-PnNzPw==", "cGE-PnNzPw"] {
        assert_eq!(masker.mask(&format!("auth {form} end")), "auth **** end", "{form}");
    }
    // The padded form is the longer match: no `==` left behind.
    assert_eq!(STANDARD.encode(secret), "cGE+PnNzPw==");
}

#[test]
fn json_escaped_form_is_masked() {
    let secret = "pa\"ss\\w\n\u{1}é";
    let masker = Masker::new([secret]);
    let doc = serde_json::json!({ "password": secret }).to_string();
    assert_eq!(masker.mask(&doc), r#"{"password":"****"}"#);
}

#[test]
fn percent_encoded_form_is_masked() {
    let masker = Masker::new(["p@ss w/rd~é"]);
    assert_eq!(masker.mask("https://u:p%40ss%20w%2Frd~%C3%A9@host/"), "https://u:****@host/");
}

#[test]
fn non_utf8_bytes_around_secrets_pass_through() {
    let masker = Masker::new(["hunter22"]);
    let input: &[u8] = b"\xff\xfe hunter22\xc3 \x80hunter22";
    let expected: &[u8] = b"\xff\xfe ****\xc3 \x80****";
    assert_eq!(masker.mask_bytes(input).as_ref(), expected);
    for i in 0..=input.len() {
        assert_eq!(stream_chunks(&masker, &[&input[..i], &input[i..]]), expected, "split at {i}");
    }
}

#[test]
fn bytes_that_cannot_start_a_secret_are_released_at_once() {
    let masker = Masker::new(["hunter22"]);
    let mut stream = masker.stream();
    let mut out = Vec::new();

    stream.push(b"plain output\n", &mut out);
    assert_eq!((out.as_slice(), stream.pending()), (&b"plain output\n"[..], 0));

    // "hun" may be the start of the secret: held back, everything before it released.
    stream.push(b"say hun", &mut out);
    assert_eq!((out.as_slice(), stream.pending()), (&b"plain output\nsay "[..], 3));

    // "hunt" then "x" cannot be a secret any more: all of it goes out.
    stream.push(b"tx", &mut out);
    assert_eq!((out.as_slice(), stream.pending()), (&b"plain output\nsay huntx"[..], 0));

    // A whole secret at the end of a push is masked at once, not held.
    out.clear();
    stream.push(b"pw hunter22", &mut out);
    assert_eq!((out.as_slice(), stream.pending()), (&b"pw ****"[..], 0));
}

#[test]
fn carry_is_shorter_than_the_longest_pattern() {
    let secret = "abcdefghij";
    let masker = Masker::new([secret]);
    let longest = STANDARD.encode(secret).len();
    let mut stream = masker.stream();
    let mut out = Vec::new();
    // Only a prefix of the secret itself is held, not the whole stream.
    stream.push(b"0123456789 abcdefghi", &mut out);
    assert_eq!(stream.pending(), secret.len() - 1);
    assert!(stream.pending() < longest);
    assert_eq!(out, b"0123456789 ");
}

#[test]
fn idle_flush_releases_the_carry_and_still_masks_the_rest_of_a_split_secret() {
    let masker = Masker::new(["hunter22"]);
    let mut stream = masker.stream();
    let mut out = Vec::new();
    stream.push(b"Password: hunt", &mut out);
    assert_eq!(stream.pending(), 4);
    stream.flush(&mut out);
    assert_eq!((out.as_slice(), stream.pending()), (&b"Password: hunt"[..], 0));
    stream.push(b"er22 ok\n", &mut out);
    assert_eq!(out, b"Password: hunt**** ok\n");
}

#[test]
fn idle_flush_output_is_not_repeated_before_a_later_match() {
    // "xhun" is held (it could begin "xhunqq"), then written by the flush; "hunter22" completed
    // later starts inside it, after the "x", which must not be written twice.
    let masker = Masker::new(["xhunqq", "hunter22"]);
    let mut stream = masker.stream();
    let mut out = Vec::new();
    stream.push(b"say xhun", &mut out);
    assert_eq!(stream.pending(), 4);
    stream.flush(&mut out);
    stream.push(b"ter22!", &mut out);
    assert_eq!(out, b"say xhun****!");
}

#[test]
fn idle_flush_does_not_mask_text_that_merely_resembles_a_secret() {
    let masker = Masker::new(["hunter22"]);
    let mut stream = masker.stream();
    let mut out = Vec::new();
    stream.push(b"hunt", &mut out);
    stream.flush(&mut out);
    stream.push(b"ing season\n", &mut out);
    stream.flush(&mut out);
    assert_eq!(out, b"hunting season\n");
}

#[test]
fn empty_masker_copies_and_holds_nothing() {
    for masker in [Masker::new(Vec::<String>::new()), Masker::new([""]), Masker::default()] {
        assert!(masker.is_empty());
        let mut stream = masker.stream();
        let mut out = Vec::new();
        stream.push(b"any\xffthing", &mut out);
        assert_eq!((out.as_slice(), stream.pending()), (&b"any\xffthing"[..], 0));
    }
}

#[test]
fn short_secrets_are_reported_by_name_and_not_masked() {
    let (masker, short) = Masker::from_named([("PIN", "123"), ("DB_PASSWORD", "hunter22"), ("UNSET_TOKEN", "")]);
    assert_eq!(short, vec![ShortSecret { name: "PIN".into(), len: 3, min_len: MIN_SECRET_LEN }]);
    assert_eq!(masker.secret_count(), 1);
    assert_eq!(masker.mask("123 hunter22"), "123 ****");
    let warning = short[0].to_string();
    assert!(warning.contains("PIN") && !warning.contains("123"), "{warning}");
}

#[test]
fn builder_changes_the_minimum_length() {
    let (masker, short) = Masker::builder().min_secret_len(2).build_named([("PIN", "123"), ("X", "9")]).expect("builds");
    assert_eq!(short, vec![ShortSecret { name: "X".into(), len: 1, min_len: 2 }]);
    assert_eq!(masker.mask("pin 123 x 9"), "pin **** x 9");
}

#[test]
fn debug_output_shows_no_secret() {
    let masker = Masker::new(["hunter22"]);
    let mut stream = masker.stream();
    stream.push(b"hunter2", &mut Vec::new());
    let debug = format!("{masker:?} {stream:?}");
    assert!(!debug.contains("hunter2") && !debug.contains(&STANDARD.encode("hunter22")), "{debug}");
}

#[test]
fn masker_is_shareable_across_threads() {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<Masker>();
    fn sendable<T: Send>() {}
    sendable::<MaskStream>();
}

#[test]
fn default_secret_names() {
    let names = SecretNames::default();
    assert_eq!(names, SecretNames::parse(DEFAULT_SECRET_PATTERNS));
    for name in ["DB_PASSWORD", "db_password", "Api_Key", "GITHUB_TOKEN", "AWS_SECRET", "PASSWORD", "token", "Secret", "_KEY"] {
        assert!(names.is_secret(name), "{name}");
    }
    for name in ["MONKEY", "PASSWORD_FILE", "KEYS", "TOKENIZER", "MY_SECRETS", "HOME", ""] {
        assert!(!names.is_secret(name), "{name}");
    }
}

#[test]
fn secret_names_parse_a_comma_separated_list() {
    let names = SecretNames::parse(" API_* , *_CRED,, *aws*key* ");
    assert_eq!(names.patterns().collect::<Vec<_>>(), ["API_*", "*_CRED", "*aws*key*"]);
    for name in ["api_url", "API_", "x_cred", "MY_AWS_ACCESS_KEY_ID", "awskey"] {
        assert!(names.is_secret(name), "{name}");
    }
    for name in ["DB_PASSWORD", "XAPI_URL", "CRED", "AWS_REGION", "KEY_AWS"] {
        assert!(!names.is_secret(name), "{name}");
    }
    assert!(!SecretNames::parse("").is_secret("PASSWORD"));
    assert!(!SecretNames::parse(" , ").is_secret(""));
    assert!(SecretNames::parse("*").is_secret(""));
}

/// Every form a secret is masked in, as the tests see them.
fn forms(secret: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![secret.as_bytes().to_vec()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret).into_bytes());
    }
    forms
}

/// Secrets over a small alphabet, so that they overlap, share prefixes and recur in the noise.
fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[ab]{4,7}").expect("valid regex"),
        proptest::string::string_regex("[abc=+/é]{4,9}").expect("valid regex"),
        proptest::string::string_regex("[ab]{14,24}").expect("valid regex"),
    ]
}

/// One piece of the stream: a secret or one of its base64 forms, or noise that may be any bytes.
fn piece(secrets: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    let n = secrets.len();
    prop_oneof![
        (0..n, 0..5usize).prop_map(move |(i, f)| forms(&secrets[i])[f].clone()),
        proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), any::<u8>()], 0..6),
    ]
}

fn case() -> impl Strategy<Value = (Vec<String>, Vec<u8>, Vec<usize>)> {
    proptest::collection::vec(secret(), 1..4).prop_flat_map(|secrets| {
        let input = proptest::collection::vec(piece(secrets.clone()), 0..12).prop_map(|p| p.concat());
        (Just(secrets), input, proptest::collection::vec(0..40usize, 0..8))
    })
}

proptest! {
    #![proptest_config(crate::common::proptest_config(2000))]

    /// Streaming in any chunks equals one-shot masking of the whole input, and no secret (nor
    /// its base64) survives either.
    #[test]
    fn streaming_equals_one_shot_and_leaks_nothing((secrets, input, mut cuts) in case()) {
        let masker = Masker::new(secrets.iter().cloned());
        for cut in &mut cuts {
            *cut = (*cut).min(input.len());
        }
        cuts.sort_unstable();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            chunks.push(&input[from..cut]);
            from = cut;
        }
        let one_shot = masker.mask_bytes(&input).into_owned();
        prop_assert_eq!(&stream_chunks(&masker, &chunks), &one_shot);
        for secret in &secrets {
            for form in forms(secret) {
                prop_assert!(!contains(&one_shot, &form), "{:?} leaked", String::from_utf8_lossy(&form));
            }
        }
        // With no secret in it, the output is the input.
        if !secrets.iter().flat_map(|s| forms(s)).any(|f| contains(&input, &f)) {
            prop_assert_eq!(&one_shot, &input);
        }
    }
}

proptest! {
    #![proptest_config(crate::common::proptest_config(1000))]

    /// Idle flushes at random points may reveal the start of a secret, never the whole of one:
    /// the rest of a secret split by a flush is still masked.
    #[test]
    fn idle_flushes_never_reveal_a_whole_secret(
        (secrets, input, cuts) in case(),
        flushes in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let masker = Masker::new(secrets.iter().cloned());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let mut stream = masker.stream();
        let mut out = Vec::new();
        let mut from = 0;
        for (i, &cut) in cuts.iter().chain([input.len()].iter()).enumerate() {
            stream.push(&input[from..cut], &mut out);
            if flushes.get(i).copied().unwrap_or(false) {
                stream.flush(&mut out);
                prop_assert_eq!(stream.pending(), 0);
            }
            from = cut;
        }
        stream.flush(&mut out);
        for secret in &secrets {
            for form in forms(secret) {
                prop_assert!(!contains(&out, &form), "{:?} leaked", String::from_utf8_lossy(&form));
            }
        }
    }
}
