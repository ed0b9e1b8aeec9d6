"""The verifier's pair features: each names the difference it is meant to see, and only that."""

from __future__ import annotations

import pytest

from services.cache.features import FEATURE_NAMES, pair_features
from services.cache.intent import task, topic
from services.cache.text import analyse, edit_distance, is_typo, stem

pytestmark = pytest.mark.unit


def feats(a: str, b: str, cosine: float = 0.9) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, pair_features(a, b, cosine), strict=True))


def test_one_value_per_name_and_symmetric() -> None:
    a, b = "How do I cancel my subscription?", "Hi, I'd like to end my subscription on Friday, how?"
    assert len(pair_features(a, b, 0.7)) == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert pair_features(a, b, 0.7) == pytest.approx(pair_features(b, a, 0.7))


def test_identical_questions() -> None:
    f = feats("Is the clinic open on Sundays?", "Is  the clinic open on Sundays?")
    assert f["jaccard"] == f["fuzzy_jaccard"] == f["length_ratio"] == 1.0
    assert f["typo_only"] == 1.0
    for name in ("negation_mismatch", "antonym", "number_mismatch", "date_mismatch", "entity_mismatch",
                 "unmatched_content", "minimal_edit", "reordered", "order_swaps"):
        assert f[name] == 0.0, name


@pytest.mark.parametrize(("a", "b"), [
    ("Cancel my subscription", "Don't cancel my subscription"),
    ("Can I park here?", "Can't I park here?"),
    ("What's the price for members?", "What's the price for non-members?"),
    ("Which fees can a landlord charge?", "Which fees can a landlord never charge?"),
])
def test_negation(a: str, b: str) -> None:
    assert feats(a, b)["negation_mismatch"] == 1.0


def test_negation_is_about_polarity_not_spelling() -> None:
    assert feats("I can't log in, what should I do?", "I cannot log in, what should I do?")["negation_mismatch"] == 0.0


@pytest.mark.parametrize(("a", "b"), [
    ("Is the clinic open on Sundays?", "Is the clinic closed on Sundays?"),
    ("How do I turn on two-factor authentication?", "How do I turn off two-factor authentication?"),
    ("Is ibuprofen safe with alcohol?", "Is ibuprofen unsafe with alcohol?"),
    ("How do I subscribe to the newsletter?", "How do I unsubscribe from the newsletter?"),
    ("Which bands have increased this year?", "Which bands have decreased this year?"),
])
def test_antonym_and_no_typo(a: str, b: str) -> None:
    f = feats(a, b)
    assert f["antonym"] == 1.0
    assert f["typo_only"] == 0.0, "an opposite is never taken for a misspelling"


@pytest.mark.parametrize(("a", "b"), [
    ("What's 15% of 200?", "What's 50% of 200?"),
    ("Track order 48213", "Track order 48231"),
    ("Do you have a table for two?", "Do you have a table for 12?"),
    ("Who won the World Cup in 2014?", "Who won the World Cup in 2018?"),
])
def test_numbers(a: str, b: str) -> None:
    assert feats(a, b)["number_mismatch"] == 1.0


def test_number_words_equal_digits() -> None:
    assert feats("A table for two at 7pm", "A table for 2 at 7pm")["number_mismatch"] == 0.0


def test_dates() -> None:
    assert feats("Are you open on Saturday?", "Are you open on Sunday?")["date_mismatch"] == 1.0
    assert feats("Can I book for tomorrow?", "Can I book for Friday?")["date_mismatch"] == 1.0


@pytest.mark.parametrize(("a", "b"), [
    ("How do I export my data from Salesforce?", "How do I export my data from HubSpot?"),
    ("What's Mary's phone number?", "What's Mark's phone number?"),
    ("What's the capital of Australia?", "What's the capital of Austria?"),
    ("How do I install Python on Windows?", "How do I install Python on macOS?"),
])
def test_entities(a: str, b: str) -> None:
    assert feats(a, b)["entity_mismatch"] == 1.0


def test_sentence_opening_capital_is_not_an_entity() -> None:
    assert analyse("Where is my order? Please help.").entities == frozenset()
    assert analyse("Is the Camden branch open?").entities == {"camden"}


def test_typos_are_not_differences() -> None:
    f = feats("How do I change the email address on my account?", "How do I chnage the email adress on my acount?")
    assert f["jaccard"] < 1.0
    assert f["fuzzy_jaccard"] == 1.0 and f["typo_only"] == 1.0 and f["unmatched_content"] == 0.0


def test_greetings_and_contractions_are_not_differences() -> None:
    f = feats("What is the notice period to end my tenancy?", "Hi! What's the notice period to end my tenancy? Cheers")
    assert f["jaccard"] == 1.0 and f["typo_only"] == 1.0


def test_one_word_swap_is_a_minimal_edit() -> None:
    f = feats("What does my home insurance cover?", "What does my car insurance cover?")
    assert f["unmatched_content"] == 2.0
    assert f["minimal_edit"] == pytest.approx(f["fuzzy_jaccard"]) and f["minimal_edit"] > 0.6


def test_swapped_order() -> None:
    f = feats("How do I migrate my database from MySQL to Postgres?",
              "How do I migrate my database from Postgres to MySQL?")
    assert f["reordered"] == 1.0 and f["order_swaps"] > 0


def test_length_ratio() -> None:
    assert feats("Track my order", "Track my order for me please now")["length_ratio"] == pytest.approx(3 / 7)


def test_low_similarity_rewording_is_marked() -> None:
    f = feats("What repairs is my landlord responsible for?", "Which bits of maintenance am I expected to handle?", 0.6)
    assert f["reworded_below_0.8"] > 0.1
    assert feats("Track my order", "Track my order", 0.6)["reworded_below_0.8"] == 0.0


def test_edit_distance_and_typos() -> None:
    assert edit_distance("evenigns", "evenings") == 1  # a swap of neighbours is one edit
    assert edit_distance("kitten", "sitting", limit=5) == 3
    assert edit_distance("a", "abcdef") == 3  # capped at limit + 1
    assert is_typo("perscription", "prescription")
    assert is_typo("aply", "apply")
    assert not is_typo("2014", "2018")
    assert not is_typo("safe", "unsafe")
    assert not is_typo("on", "in")


def test_word_forms_are_not_differences() -> None:
    assert is_typo("waiting", "wait") and is_typo("quotation", "quote") and is_typo("applying", "apply")
    assert stem("child's") == "child"
    f = feats("What is the waiting time for a blood test?", "What's the wait time for a blood test?")
    assert f["typo_only"] == 1.0


def test_a_clause_moved_whole_is_not_a_swap() -> None:
    f = feats("How do I claim a refund for a delayed train?", "For a delayed train, how do I claim a refund?")
    assert f["reordered"] == 0.0 and f["order_swaps"] == 0.0


def test_one_as_a_pronoun_is_not_a_number() -> None:
    f = feats("How do I order a replacement debit card?", "Hi, quick one: how do I order a replacement debit card?")
    assert f["number_mismatch"] == 0.0 and f["typo_only"] == 1.0
    assert feats("A table for two", "A table for three")["number_mismatch"] == 1.0


@pytest.mark.parametrize(("a", "b"), [
    ("It cost $76,000", "It cost 76000 dollars"),
    ("She charges $15.00 per student", "She charges $15 per student"),
    ("Cody eats 1/3 of them", "Cody eats a third of them"),
    ("Half of them got off", "0.5 of them got off"),
    ("He sold it within 1 week", "He sold it within a week"),
])
def test_one_number_many_spellings(a: str, b: str) -> None:
    assert feats(a, b)["number_mismatch"] == 0.0


@pytest.mark.parametrize(("a", "b"), [
    ("Find the value of f(2)", "Find the value of f(-2)"),
    ("Remind me at 7am", "Remind me at 7pm"),
    ("She gave 1/3 to Bill", "She gave 2/3 to Bill"),
])
def test_signs_clock_times_and_fractions_are_numbers(a: str, b: str) -> None:
    assert feats(a, b)["number_mismatch"] == 1.0


def test_ordinal_first_and_once_are_not_numbers() -> None:
    assert analyse("First question: what's your favourite part?").numbers == frozenset()
    assert analyse("What happens once I've been here five years?").numbers == {"5"}
    assert analyse("She eats a third of them; the third person waits").numbers == {"0.333333", "3rd"}


def test_dates_and_units_of_time() -> None:
    assert feats("Is the clinic open on Sundays?", "Can I come to the clinic on a Sunday?")["date_mismatch"] == 0.0
    assert feats("I am late", "I was late")["date_mismatch"] == 0.0  # "am" the verb is no time
    assert feats("How much per week?", "How much per day?")["unit_mismatch"] == 1.0
    assert feats("Annual fee?", "Yearly fee?")["unit_mismatch"] == 0.0


def test_synonyms_are_the_same_word() -> None:
    assert is_typo("fastest", "quickest") and is_typo("street", "road")
    assert not is_typo("students", "nonprofits")
    f = feats("How do I update my address?", "How do I change my address?")
    assert f["typo_only"] == 1.0 and f["diff_blocks"] == 0.0


def test_opposite_particles_count_only_facing_each_other() -> None:
    assert feats("How do I opt in to the pension?", "How do I opt out of the pension?")["antonym"] == 1.0
    # A rewording moves "to" and "from" freely.
    assert feats("How do I request a reference from my employer?",
                 "How do I ask my old company to provide a reference?")["antonym"] == 0.0


def test_direction_swap() -> None:
    assert feats("How do I transfer my ISA from Hargreaves Lansdown to Vanguard?",
                 "I want to move my Vanguard ISA over to Hargreaves Lansdown")["direction_swap"] == 1.0
    assert feats("How much is a return ticket from London to Manchester?",
                 "What's the price of a London to Manchester return?")["direction_swap"] == 0.0


@pytest.mark.parametrize(("a", "b"), [
    ("How do I increase my pension contributions?", "I want to pay less into my pension, how?"),
    ("Which schools are rated outstanding?", "Which schools were judged inadequate?"),
    ("When can my employer lawfully make deductions?", "Which deductions would be illegal?"),
])
def test_polarity(a: str, b: str) -> None:
    assert feats(a, b)["polarity_mismatch"] == 1.0


def test_diff_sees_one_changed_stretch_in_a_near_copy() -> None:
    a = "Jeff and Brad split 100 dollars. Jeff gets 4 times as much as Brad. How much does Jeff get?"
    f = feats(a, a.replace("does Jeff get", "does Brad get"))
    assert f["single_change"] == 1.0 and f["substitutions"] == 1.0 and f["insertions"] == 0.0
    assert f["diff_ratio"] > 0.9
    reworded = feats("What is the main contrast between the short-run and long-run Phillips curve?",
                     "How does the short-run Phillips curve differ from the long-run one?")
    assert reworded["diff_blocks"] >= 2 and reworded["diff_ratio"] < 0.8


def test_request_words_are_not_content() -> None:
    f = feats("What is the Marshall Plan?", "Can you explain what the Marshall Plan is?")
    assert f["unmatched_content"] == 0.0 and f["diff_blocks"] == 0.0


@pytest.mark.parametrize(("text", "expected"), [
    ("write a poem", "create"),
    ("Compose a limerick", "create"),
    ("give me a riddle", "create"),
    ("explain recursion", "explain"),
    ("What is Kubernetes?", "explain"),
    ("how does a car engine work?", "explain"),
    ("tell me about Rome", "explain"),
    ("how do I install Kubernetes?", "howto"),
    ("how to cook rice", "howto"),
    ("What's the process for submitting an expense claim?", "howto"),
    ("How do I fix my car engine?", "howto"),  # the steps, whatever the verb
    ("fix this code", "fix"),
    ("debug this code", "fix"),
    ("summarize this article", "summarise"),
    ("translate this into Spanish", "translate"),
    ("which index fund should I buy?", "recommend"),
    ("What's 15% of 200?", "solve"),
    ("plan a trip to Rome", "plan"),
    ("help me with my essay", "assist"),
    ("Do you have parking?", None),
    ("What's the API rate limit on the free plan?", "explain"),  # "plan" a noun, not the task
])
def test_task(text: str, expected: str | None) -> None:
    assert task(analyse(text).tokens) == expected


def test_topic_leaves_out_the_task_and_the_framing() -> None:
    assert topic(analyse("Can you write a poem about the sea?")) == ("poem", "sea")
    assert topic(analyse("How does the stock market work?")) == ("stock", "market")


@pytest.mark.parametrize(("a", "b"), [
    ("explain recursion", "write a recursive function"),
    ("what is Kubernetes?", "how do I install Kubernetes?"),
    ("give me a riddle", "solve this riddle"),
])
def test_task_mismatch_in_short_requests(a: str, b: str) -> None:
    assert feats(a, b)["task_mismatch_x_short"] == 1.0


def test_same_task_rewordings_do_not_mismatch() -> None:
    for a, b in (("what is inflation?", "explain inflation"), ("fix this code", "debug this code"),
                 ("how do I cook rice?", "how to cook rice"), ("write a poem", "compose a poem")):
        assert feats(a, b)["task_mismatch_x_short"] == 0.0, (a, b)


def test_task_features_fade_in_long_questions() -> None:
    long = feats("What are the entry requirements for the undergraduate law degree at your university?",
                 "How do I apply for the undergraduate law degree at your university?")
    assert 0.0 < long["task_mismatch_x_short"] < 0.5


def test_topic_swapped_in_a_short_request() -> None:
    f = feats("write a poem", "write a story")
    assert f["task_mismatch_x_short"] == 0.0
    assert f["topic_swapped_x_short"] == f["head_changed_x_short"] == 1.0
    assert f["slot_swap_x_short"] > 0.5
    added = feats("write a test", "write a test plan")
    assert added["topic_added_x_short"] == 1.0 and added["topic_swapped_x_short"] == 0.0
    assert feats("How do vaccines work?", "What are vaccines used for?")["explain_narrowed_x_short"] == 1.0
