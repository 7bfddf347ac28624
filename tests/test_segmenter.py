"""Specification of the streaming text segmenter (tts_core.text.segmenter)."""

from __future__ import annotations

import random
import re
import time

import pytest

from tts_core.presets import SegmentationSettings, load_presets
from tts_core.text import TextSegmenter, segment_text

# A short clause threshold so clause rules show on short sentences; max_chars out of the way.
CLAUSES = SegmentationSettings(min_clause_chars=20, max_chars=2000)
# Clause boundaries effectively off: only sentence rules act.
SENTENCES = SegmentationSettings(min_clause_chars=1000, max_chars=2000)
ADAPTIVE = SegmentationSettings(min_clause_chars=40, first_min_clause_chars=12, max_chars=240)
BALANCED = SegmentationSettings(min_clause_chars=40, max_chars=240)


def stream(tokens: list[str], settings: SegmentationSettings = CLAUSES) -> list[str]:
    """Segments of a turn fed token by token, flush included."""
    segmenter = TextSegmenter(settings)
    segments: list[str] = []
    for token in tokens:
        segments += segmenter.push(token)
    return segments + segmenter.flush()


def random_split(text: str, rng: random.Random, max_len: int = 6) -> list[str]:
    tokens, i = [], 0
    while i < len(text):
        step = rng.randint(1, max_len)
        tokens.append(text[i : i + step])
        i += step
    return tokens


def word_tokens(text: str) -> list[str]:
    """Split like an LLM tokenizer often does: each word with the whitespace before it."""
    tokens = re.findall(r"\s*\S+|\s+$", text)
    assert "".join(tokens) == text
    return tokens


SAMPLE_TEXTS = [
    "Hello, Dr. Smith. It's 6:30 now, and your appointment is at 10:45pm tomorrow.",
    "It costs 3.5 dollars. It costs 3. Five of them cost 10,000 yen, or 1,234.56 euros!",
    "Mr. and Mrs. Jones live on Elm St. near the park. Ms. Lee vs. Mr. Park is on at 6 p.m. today.",
    "Bring fruit, e.g. apples, i.e. the red ones. We sell pears, plums, etc. and more. "
    "Also nuts etc. Done.",
    "The U.S. economy grew. I left the U.S. Then I came back at 7 a.m. on Monday.",
    "J. Smith and J. R. R. Tolkien met. Neither do I. Really?! Yes... well... maybe. Wait… What?",
    "Write to john.doe@example.com or visit https://example.com/a.b?x=1,2 or www.example.org. Thanks!",
    '"Really?" she asked. "Yes!" He left. (See the note.) The end, "they said," of it all.',
    "Here is a long clause that keeps going for a while; then another one - and a dash — "
    "and more -- end.",
    "1. Call the office\n2. Send the email\n\nThat's all. Version 2.0.1 is out . . . so update.",
    "Martin Luther King Jr. spoke. Prices rose by .5 percent. Room no. 5 is free. No. It is not.",
    " Leading and trailing spaces   with  runs of   whitespace, and\ttabs.  ",
    "A sentence without any punctuation that goes on and on and on well past the maximum length "
    "allowed for a single segment so that it has to be cut at a word boundary somewhere sensible "
    "and then keeps going even further without ever stopping for breath or a comma or anything",
    "https://example.com/a-very/long/path/that/has/no/whitespace/at/all/and/keeps/going/for/more/"
    "than/the/maximum/length/of/a/segment/which/is/fine/because/words/are/kept/whole.html ok.",
]


# -- sentence ends ---------------------------------------------------------------------------------


def test_emits_a_sentence_once_whitespace_follows_it():
    segmenter = TextSegmenter(SENTENCES)
    assert segmenter.push("Hello there.") == []
    assert segmenter.push(" How") == ["Hello there."]
    assert segmenter.pending_text == "How"


def test_question_and_exclamation_marks_end_sentences():
    assert segment_text("Is it ready? Yes! Great?! Fine.", SENTENCES) == [
        "Is it ready?",
        "Yes!",
        "Great?!",
        "Fine.",
    ]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    assert segment_text('He said "Hi." Then (he left.) And [done!] Bye.', SENTENCES) == [
        'He said "Hi."',
        "Then (he left.)",
        "And [done!]",
        "Bye.",
    ]


def test_quoted_question_followed_by_lowercase_does_not_end_the_sentence():
    assert segment_text('"Really?" she asked. "Yes!" He nodded.', SENTENCES) == [
        '"Really?" she asked.',
        '"Yes!"',
        "He nodded.",
    ]


def test_a_period_waits_for_the_next_character_before_deciding():
    segmenter = TextSegmenter(SENTENCES)
    assert segmenter.push("It costs 3.") == []
    assert segmenter.push("5 dollars.") == []
    assert segmenter.push(" Ok") == ["It costs 3.5 dollars."]


def test_a_number_at_a_sentence_end_still_ends_the_sentence():
    assert segment_text("It costs 3. Then we go.", SENTENCES) == ["It costs 3.", "Then we go."]


def test_final_period_ends_the_last_sentence_at_flush():
    segmenter = TextSegmenter(SENTENCES)
    assert segmenter.push("It costs 3.") == []
    assert segmenter.flush() == ["It costs 3."]


def test_newline_ends_a_segment():
    assert segment_text("Options\n- the first one\n\n- the second one", SENTENCES) == [
        "Options",
        "- the first one",
        "- the second one",
    ]


def test_numbered_list_marker_is_not_a_segment_of_its_own():
    assert segment_text("1. Call the office\n2. Email them. Then rest.", SENTENCES) == [
        "1. Call the office",
        "2. Email them.",
        "Then rest.",
    ]


# -- things that must not be split -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "It costs 3.5 dollars today",
        "We raised 10,000 dollars so far",
        "The total is 1,234.56 euros in all",
        "Prices rose by .5 percent this year",
        "Version 2.0.1 ships soon enough now",
    ],
)
def test_does_not_split_inside_numbers(text):
    assert segment_text(text, CLAUSES) == [text]
    assert stream(list(text), CLAUSES) == [text]


def test_does_not_split_inside_decimal_numbers():
    assert segment_text("It costs 3.5 dollars. Then 2.25 more.", SENTENCES) == [
        "It costs 3.5 dollars.",
        "Then 2.25 more.",
    ]


@pytest.mark.parametrize("text", ["It is 6:30 now and later", "Meet me at 10:45pm over there"])
def test_does_not_split_inside_times(text):
    assert segment_text(text, SegmentationSettings(min_clause_chars=1)) == [text]
    assert stream(list(text), SegmentationSettings(min_clause_chars=1)) == [text]


@pytest.mark.parametrize("title", ["Dr.", "Mr.", "Mrs.", "Ms.", "St.", "Jr.", "Prof."])
def test_titles_never_end_a_sentence(title):
    text = f"Please call {title} Smith about it. Thanks."
    assert segment_text(text, SENTENCES) == [f"Please call {title} Smith about it.", "Thanks."]


def test_dr_followed_by_a_name_is_never_emitted_early():
    segmenter = TextSegmenter(SegmentationSettings(min_clause_chars=1))
    assert segmenter.push("Hello D") == []
    assert segmenter.push("r.") == []
    assert segmenter.push(" Smith") == []
    assert segmenter.pending_text == "Hello Dr. Smith"
    assert segmenter.push(". How") == ["Hello Dr. Smith."]


@pytest.mark.parametrize("text", ["Cats vs. dogs is old news.", "Roe v. Wade came up today."])
def test_versus_never_ends_a_sentence(text):
    assert segment_text(text, SENTENCES) == [text]


def test_etc_before_lowercase_does_not_end_the_sentence():
    assert segment_text("We have pears, plums, etc. and more of them.", SENTENCES) == [
        "We have pears, plums, etc. and more of them."
    ]


def test_etc_before_a_capital_ends_the_sentence():
    assert segment_text("We have pears, plums, etc. Then we go.", SENTENCES) == [
        "We have pears, plums, etc.",
        "Then we go.",
    ]


def test_etc_waits_for_the_next_word_before_deciding():
    segmenter = TextSegmenter(SENTENCES)
    assert segmenter.push("Pears, plums, etc. ") == []
    assert segmenter.push("  a") == []
    assert segmenter.pending_text == "Pears, plums, etc.   a"


@pytest.mark.parametrize("text", ["Bring fruit, e.g. Apples and Pears.", "The red ones, i.e. Apples."])
def test_latin_abbreviations_never_end_a_sentence(text):
    assert segment_text(text, SENTENCES) == [text]


@pytest.mark.parametrize(
    "text",
    [
        "The U.S. economy grew fast.",
        "Come at 7 a.m. tomorrow please.",
        "It ends at 6 p.m. on the dot.",
        "Meet at 6 p.m. 5 of us will come.",
    ],
)
def test_dotted_abbreviations_before_lowercase_or_digits_do_not_end_the_sentence(text):
    assert segment_text(text, SENTENCES) == [text]


def test_dotted_abbreviations_before_a_capital_end_the_sentence():
    assert segment_text("See you at 6 p.m. Bye now. I left the U.S. Then I came back.", SENTENCES) == [
        "See you at 6 p.m.",
        "Bye now.",
        "I left the U.S.",
        "Then I came back.",
    ]


def test_single_capital_initials_do_not_end_a_sentence():
    assert segment_text("J. Smith met J. R. R. Tolkien. Then they left.", SENTENCES) == [
        "J. Smith met J. R. R. Tolkien.",
        "Then they left.",
    ]


def test_the_pronoun_i_still_ends_a_sentence():
    assert segment_text("Neither do I. Okay.", SENTENCES) == ["Neither do I.", "Okay."]


@pytest.mark.parametrize(
    "text",
    [
        "Write to john.doe@example.com for help.",
        "Go to https://example.com/a.b?x=1,2 for more.",
        "Visit www.example.org/a,b now please.",
    ],
)
def test_does_not_split_email_addresses_or_urls(text):
    assert segment_text(text, SegmentationSettings(min_clause_chars=1)) == [text]
    assert stream(list(text), SegmentationSettings(min_clause_chars=1)) == [text]


def test_url_or_address_at_a_sentence_end_still_ends_the_sentence():
    assert segment_text("Visit www.example.org. Or mail john.doe@example.com. Bye.", SENTENCES) == [
        "Visit www.example.org.",
        "Or mail john.doe@example.com.",
        "Bye.",
    ]


def test_ellipsis_before_lowercase_is_a_pause_not_a_sentence_end():
    assert segment_text("Well... okay then. Hmm… maybe so.", SENTENCES) == [
        "Well... okay then.",
        "Hmm… maybe so.",
    ]
    # ... but it is a clause boundary once the segment is long enough.
    assert segment_text("I was thinking about it... and yes.", CLAUSES) == [
        "I was thinking about it...",
        "and yes.",
    ]


def test_ellipsis_before_a_capital_ends_the_sentence():
    assert segment_text("Wait... What? Hold on… Okay.", SENTENCES) == [
        "Wait...",
        "What?",
        "Hold on…",
        "Okay.",
    ]


def test_stray_spaced_periods_do_not_end_sentences():
    assert segment_text("So . . . we wait . Then go.", SENTENCES) == ["So . . . we wait . Then go."]


# -- clause boundaries -----------------------------------------------------------------------------


def test_clause_boundary_is_ignored_below_min_clause_chars():
    assert segment_text("Hi, there; I see: yes, and that is all.", CLAUSES) == [
        "Hi, there; I see: yes,",
        "and that is all.",
    ]


def test_clause_boundary_is_used_at_exactly_min_clause_chars():
    settings = SegmentationSettings(min_clause_chars=10)
    assert segment_text("12345678, abc", settings) == ["12345678, abc"]  # "12345678," is 9 long
    assert segment_text("123456789, abc", settings) == ["123456789,", "abc"]  # "123456789," is 10


@pytest.mark.parametrize("punct", [",", ";", ":"])
def test_clause_punctuation_splits_long_segments(punct):
    text = f"This part is long enough to be spoken{punct} and then the rest."
    assert segment_text(text, CLAUSES) == [
        f"This part is long enough to be spoken{punct}",
        "and then the rest.",
    ]


@pytest.mark.parametrize("dash", [" -", " –", " —", "--", " --", "—"])
def test_dashes_are_clause_boundaries(dash):
    text = f"This part is long enough to be spoken{dash} and then the rest."
    assert segment_text(text, CLAUSES) == [
        f"This part is long enough to be spoken{dash}",
        "and then the rest.",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "A really well-known and well-loved song plays on.",
        "Both the pre- and the post-war years were long.",
        "The long wait—finally—was over and done with.",
    ],
)
def test_hyphens_and_unspaced_dashes_inside_words_are_not_boundaries(text):
    assert segment_text(text, SegmentationSettings(min_clause_chars=1)) == [text]


def test_clause_punctuation_inside_quotes_is_a_boundary():
    assert segment_text('"This part is long enough," she said slowly.', CLAUSES) == [
        '"This part is long enough,"',
        "she said slowly.",
    ]


def test_adaptive_first_segment_is_shorter():
    text = "Hello there, Mr. Jones, thanks for calling, I have your file here, give me a moment please."
    assert segment_text(text, ADAPTIVE) == [
        "Hello there,",
        "Mr. Jones, thanks for calling, I have your file here,",
        "give me a moment please.",
    ]
    assert segment_text(text, BALANCED) == [
        "Hello there, Mr. Jones, thanks for calling,",
        "I have your file here, give me a moment please.",
    ]


def test_first_clause_threshold_applies_again_to_each_new_turn():
    segmenter = TextSegmenter(ADAPTIVE)
    turn = "Hello there, Mr. Jones, thanks for calling today, yes."
    first_turn = segmenter.push(turn) + segmenter.flush()
    assert first_turn[0] == "Hello there,"
    assert segmenter.push(turn) + segmenter.flush() == first_turn
    segmenter.push("Something, else, entirely")
    segmenter.reset()
    assert segmenter.push(turn) + segmenter.flush() == first_turn


def test_first_threshold_applies_only_to_the_first_segment():
    settings = SegmentationSettings(min_clause_chars=40, first_min_clause_chars=5, max_chars=240)
    assert segment_text("Okay, sure, fine, yes, good, right, all done here.", settings) == [
        "Okay,",
        "sure, fine, yes, good, right, all done here.",
    ]


def test_a_sentence_end_needs_no_minimum_length():
    assert segment_text("Hi. Ok. Yes.", BALANCED) == ["Hi.", "Ok.", "Yes."]


# -- max_chars -------------------------------------------------------------------------------------


def test_overlong_text_without_boundaries_is_cut_at_the_last_whitespace_before_max_chars():
    settings = SegmentationSettings(min_clause_chars=40, max_chars=20)
    assert segment_text("aaaa bbbb cccc dddd eeee ffff gggg", settings) == [
        "aaaa bbbb cccc dddd",
        "eeee ffff gggg",
    ]
    # A word ending exactly at max_chars fits.
    assert segment_text("aaaa bbbb cccc ddddd eeee", settings) == ["aaaa bbbb cccc ddddd", "eeee"]


def test_overlong_cut_waits_only_until_the_buffer_exceeds_max_chars():
    segmenter = TextSegmenter(SegmentationSettings(min_clause_chars=40, max_chars=20))
    assert segmenter.push("aaaa bbbb cccc ddddd") == []  # exactly 20: may still end with "."
    assert segmenter.push(" ") == ["aaaa bbbb cccc ddddd"]


def test_overlong_single_word_is_kept_whole():
    word = "x" * 50
    settings = SegmentationSettings(min_clause_chars=40, max_chars=20)
    assert segment_text(f"aa {word} bb cc", settings) == ["aa", word, "bb cc"]
    segmenter = TextSegmenter(settings)
    assert segmenter.push(word) == []
    assert segmenter.flush() == [word]


def test_boundaries_within_max_chars_take_precedence_over_the_length_cut():
    settings = SegmentationSettings(min_clause_chars=40, max_chars=20)
    assert segment_text("Short one. aaaa bbbb cccc dddd eeee", settings) == [
        "Short one.",
        "aaaa bbbb cccc dddd",
        "eeee",
    ]


def test_segments_never_exceed_max_chars_unless_a_single_word():
    settings = SegmentationSettings(min_clause_chars=30, max_chars=25)
    for text in SAMPLE_TEXTS:
        for segment in segment_text(text, settings):
            assert len(segment) <= 25 or " " not in segment, segment


# -- segment shape, flush, reset -------------------------------------------------------------------


def test_segments_are_stripped_and_never_empty():
    text = "   Hello.    \n\n   World,   this is it.  \t \n  "
    for settings in (CLAUSES, SegmentationSettings(min_clause_chars=1, max_chars=20)):
        segments = segment_text(text, settings)
        assert segments
        assert all(seg and seg == seg.strip() for seg in segments)


def test_blank_input_gives_no_segments():
    assert segment_text("", CLAUSES) == []
    assert segment_text("  \n\t ", CLAUSES) == []
    segmenter = TextSegmenter(CLAUSES)
    assert segmenter.push("") == []
    assert segmenter.push("   ") == []
    assert segmenter.flush() == []


def test_flush_emits_the_remainder_and_resets_for_the_next_turn():
    segmenter = TextSegmenter(SENTENCES)
    assert segmenter.push("First sentence. And the rest") == ["First sentence."]
    assert segmenter.flush() == ["And the rest"]
    assert segmenter.pending_text == ""
    assert segmenter.flush() == []
    assert segmenter.push("Next turn. Ok") == ["Next turn."]


def test_flush_resolves_a_pending_abbreviation_decision():
    segmenter = TextSegmenter(SENTENCES)
    assert segmenter.push("Pears, plums, etc. ") == []
    assert segmenter.flush() == ["Pears, plums, etc."]


def test_reset_drops_buffered_text():
    segmenter = TextSegmenter(SENTENCES)
    assert segmenter.push("I was saying that Dr. Sm") == []
    segmenter.reset()
    assert segmenter.pending_text == ""
    assert segmenter.push("New turn. ") == ["New turn."]
    assert segmenter.flush() == []


def test_pending_text_is_what_has_not_been_emitted():
    segmenter = TextSegmenter(SENTENCES)
    segmenter.push("  One. Two")
    assert segmenter.pending_text == "Two"
    segmenter.push(". Three")
    assert segmenter.pending_text == "Three"


def test_default_settings_are_the_preset_defaults():
    assert TextSegmenter().settings == SegmentationSettings()


def test_streaming_example_from_the_brief():
    tokens = ["Hel", "lo, D", "r. Smith. It's 6:", "30 now"]
    segmenter = TextSegmenter(ADAPTIVE)
    assert segmenter.push(tokens[0]) == []
    assert segmenter.push(tokens[1]) == []  # "Hello," is below the first-segment threshold
    assert segmenter.push(tokens[2]) == ["Hello, Dr. Smith."]
    assert segmenter.push(tokens[3]) == []
    assert segmenter.flush() == ["It's 6:30 now"]


# -- properties: token-split invariance, words preserved -------------------------------------------

_SETTINGS_VARIANTS = [
    CLAUSES,
    SENTENCES,
    ADAPTIVE,
    BALANCED,
    SegmentationSettings(min_clause_chars=1, max_chars=20),
    SegmentationSettings(min_clause_chars=5, first_min_clause_chars=1, max_chars=25),
]


def _assert_words_preserved(text: str, segments: list[str]) -> None:
    assert " ".join(segments).split() == text.split()
    assert all(seg and seg == seg.strip() for seg in segments)


@pytest.mark.parametrize("settings", _SETTINGS_VARIANTS, ids=lambda s: repr(s))
def test_any_token_split_gives_the_same_segments_as_the_whole_text(settings):
    rng = random.Random(1234)
    for text in SAMPLE_TEXTS:
        whole = segment_text(text, settings)
        _assert_words_preserved(text, whole)
        assert stream(list(text), settings) == whole  # one character per token
        for _ in range(40):
            assert stream(random_split(text, rng), settings) == whole


_PIECES = [
    "word", "Hello", "it", "the", "Dr.", "Mr.", "J.", "I.", "etc.", "e.g.", "U.S.", "p.m.", "no.",
    "3.5", "10,000", "1,234.56", "6:30", "10:45pm", "3.", "1.", ".5", "john.doe@example.com",
    "https://example.com/a.b?x=1,2", "www.example.org", "well-known", "pre-", "end.", "why?",
    "wow!", "wow?!", "so,", "so;", "note:", "-", "–", "—", "--", "so--", "wait...", "hmm…", ".",
    "...", '"quoted."', '"why?"', "(aside.)", "[x]", "a", "B", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
]  # fmt: skip
_GAPS = [" ", " ", " ", " ", "  ", "\n", " \n ", "\t", ""]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_PIECES) + rng.choice(_GAPS) for _ in range(rng.randint(1, 40)))


@pytest.mark.slow
@pytest.mark.parametrize("settings", _SETTINGS_VARIANTS, ids=lambda s: repr(s))
def test_token_split_invariance_on_generated_texts(settings):
    rng = random.Random(99)
    for _ in range(150):
        text = _random_text(rng)
        whole = segment_text(text, settings)
        _assert_words_preserved(text, whole)
        for _ in range(4):
            assert stream(random_split(text, rng, max_len=rng.choice([1, 3, 8])), settings) == whole


def test_emitted_segments_never_change_once_more_text_arrives():
    """Streaming is a prefix decision: what push returned is final, whatever comes next."""
    for text in SAMPLE_TEXTS:
        segmenter = TextSegmenter(CLAUSES)
        emitted: list[str] = []
        for i, char in enumerate(text):
            emitted += segmenter.push(char)
            whole_prefix = segment_text(text[: i + 1], CLAUSES)
            assert whole_prefix[: len(emitted)] == emitted
        assert emitted + segmenter.flush() == segment_text(text, CLAUSES)


def test_every_preset_in_presets_yaml_segments_consistently():
    book = load_presets()
    for name in book.names():
        settings = book.get(name).segmentation
        for text in SAMPLE_TEXTS:
            whole = segment_text(text, settings)
            _assert_words_preserved(text, whole)
            assert stream(word_tokens(text), settings) == whole
            assert stream(random_split(text, random.Random(name)), settings) == whole


def test_push_per_token_stays_cheap_on_long_turns():
    segmenter = TextSegmenter(BALANCED)
    tokens = ["tok" + str(i % 10) + (", " if i % 7 == 0 else " ") for i in range(20_000)]
    started = time.perf_counter()
    emitted = []
    for token in tokens:
        emitted += segmenter.push(token)
    emitted += segmenter.flush()
    assert time.perf_counter() - started < 2.0
    assert " ".join(emitted).split() == "".join(tokens).split()


@pytest.mark.parametrize("text", [
    "Your appointment is on Jan. 5 at 3 p.m. with Dr. Lee.",
    "The office is at 12 Main Ave. between 3rd and 4th.",
    "Please go to Apt. 4B on the second floor.",
    "She is a Ph.D. student at the clinic.",
    "Smith et al. found the same thing last year.",
    "It weighs about 5 lbs. in total.",
    "Call ext. 204 for billing.",
])
def test_dates_addresses_units_and_dotted_degrees_do_not_end_a_sentence(text: str) -> None:
    assert segment_text(text) == [text]


def test_those_abbreviations_still_end_a_sentence_before_a_capital() -> None:
    assert segment_text("We close at the end of Jan. See you then.") == [
        "We close at the end of Jan.", "See you then."]


def test_a_long_run_without_spaces_streamed_a_character_at_a_time_equals_the_whole() -> None:
    text = "x" * 5000 + " tail."
    streamed = TextSegmenter()
    segments = [s for ch in text for s in streamed.push(ch)] + streamed.flush()
    assert segments == segment_text(text)
