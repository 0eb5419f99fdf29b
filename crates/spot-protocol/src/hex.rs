//! Hex item codes: the digits of a code written in hex, when all its letters have one case
//! (the protobuf encoding sends such codes as bytes; the server packs them into integers).

/// Passes the value of each hex digit of `code`, in order, to `digit`, and says whether its
/// letters are upper case (`false` when it has none). `None` when a character is not a hex
/// digit or letters of both cases occur (`digit` may have been called for some digits).
pub fn one_case_hex(code: &[u8], mut digit: impl FnMut(u8)) -> Option<bool> {
    let (mut lower, mut upper) = (false, false);
    for &c in code {
        digit(match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => {
                lower = true;
                c - b'a' + 10
            }
            b'A'..=b'F' => {
                upper = true;
                c - b'A' + 10
            }
            _ => return None,
        });
    }
    (!(lower && upper)).then_some(upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(code: &str) -> Option<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        one_case_hex(code.as_bytes(), |d| out.push(d)).map(|upper| (out, upper))
    }

    #[test]
    fn digits_of_one_case_pass_and_mixed_case_or_other_characters_do_not() {
        assert_eq!(digits("0a9f"), Some((vec![0, 10, 9, 15], false)));
        assert_eq!(digits("0A9F"), Some((vec![0, 10, 9, 15], true)));
        assert_eq!(digits("0123"), Some((vec![0, 1, 2, 3], false)));
        assert_eq!(digits(""), Some((vec![], false)));
        assert_eq!(digits("aA"), None);
        assert_eq!(digits("0g"), None);
        assert_eq!(digits("0 1"), None);
    }
}
