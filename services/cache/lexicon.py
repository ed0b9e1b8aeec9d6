"""The word lists the verifier's features read (:mod:`services.cache.features`, :mod:`~services.cache.text`,
:mod:`~services.cache.intent`): words that negate, opposites, number and date words, and the words a
rewording changes freely.

General English, not fitted to any data set: a word belongs here because of what it means."""

from __future__ import annotations


def _split(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _list(words: str) -> list[str]:
    return words.split()


#: Words that negate what follows, and contractions ending in n't.
NEGATIONS = _split(
    "not no never none nobody nothing neither nor without cannot nowhere non stop avoid refuse "
    "exclude excluding except exception exceptions unless")

#: Opposites that flip an answer; each pair is stored both ways (see :data:`ANTONYMS`).
_ANTONYM_PAIRS = (
    ("open", "closed"), ("open", "close"), ("on", "off"), ("in", "out"), ("include", "exclude"),
    ("includes", "excludes"), ("included", "excluded"), ("allowed", "banned"), ("allowed", "forbidden"),
    ("allowed", "prohibited"), ("increase", "decrease"), ("increased", "decreased"), ("increases", "decreases"),
    ("increase", "reduce"), ("raise", "lower"), ("raise", "cut"), ("raised", "cut"), ("rise", "fall"),
    ("rising", "falling"), ("rises", "falls"), ("gain", "loss"), ("profit", "loss"),
    ("more", "less"), ("more", "fewer"), ("most", "least"), ("max", "min"), ("maximum", "minimum"),
    ("over", "under"), ("above", "below"), ("before", "after"), ("early", "late"), ("earlier", "later"),
    ("first", "last"), ("start", "end"), ("start", "stop"), ("begin", "end"), ("beginning", "ending"),
    ("opening", "closing"), ("up", "down"), ("add", "remove"), ("add", "delete"), ("enable", "disable"),
    ("activate", "deactivate"), ("join", "leave"), ("buy", "sell"), ("bought", "sold"), ("buying", "selling"),
    ("borrow", "lend"), ("deposit", "withdraw"), ("send", "receive"), ("import", "export"),
    ("upload", "download"), ("accept", "reject"), ("accept", "decline"), ("approve", "reject"),
    ("pass", "fail"), ("win", "lose"), ("success", "failure"), ("benefits", "drawbacks"),
    ("advantages", "disadvantages"), ("pros", "cons"), ("safe", "dangerous"), ("legal", "illegal"),
    ("eat", "avoid"), ("can", "cannot"), ("should", "shouldn't"), ("with", "without"), ("to", "from"),
    ("into", "from"), ("higher", "lower"), ("high", "low"), ("best", "worst"), ("good", "bad"),
    ("better", "worse"), ("lowest", "highest"), ("smallest", "largest"), ("smallest", "biggest"),
    ("small", "large"), ("small", "big"), ("smaller", "larger"), ("smaller", "bigger"), ("long", "short"),
    ("longer", "shorter"), ("longest", "shortest"), ("fast", "slow"), ("faster", "slower"), ("heavy", "light"),
    ("cheap", "expensive"), ("cheaper", "dearer"), ("young", "old"), ("younger", "older"),
    ("strong", "weak"), ("extreme", "moderate"), ("positive", "negative"), ("true", "false"),
    ("right", "wrong"), ("left", "right"), ("north", "south"), ("east", "west"), ("inside", "outside"),
    ("internal", "external"), ("public", "private"), ("full", "part"), ("permanent", "temporary"),
    ("adult", "child"), ("adults", "children"), ("male", "female"), ("men", "women"), ("boys", "girls"),
    ("entitled", "ineligible"), ("eligible", "ineligible"), ("qualify", "disqualify"), ("lock", "unlock"),
    ("mute", "unmute"), ("subscribe", "unsubscribe"), ("follow", "unfollow"), ("install", "uninstall"),
    ("pause", "resume"), ("arrive", "depart"), ("tenant", "landlord"), ("employer", "employee"),
    ("buyer", "seller"), ("lender", "borrower"), ("teacher", "student"), ("doctor", "patient"),
    ("host", "guest"), ("sender", "recipient"), ("home", "business"), ("personal", "business"),
    ("domestic", "commercial"), ("residential", "commercial"), ("undergraduate", "postgraduate"),
    ("undergraduate", "master"), ("bachelor", "master"), ("landlords", "tenants"),
    ("employers", "employees"), ("arrival", "departure"), ("input", "output"),
    ("inputs", "outputs"),
)
ANTONYMS = frozenset(_ANTONYM_PAIRS) | frozenset((b, a) for a, b in _ANTONYM_PAIRS)
#: Opposite particles ("opt in" / "opt out", "turn on" / "off", "from A to B"): they flip a
#: question as often as a rewording swaps them ("ask my employer for" / "request from").
PARTICLES = _split("in out on off to from into with without over under up down")
#: Prefixes that turn a word into its opposite (safe/unsafe, like/dislike, members/non-members).
NEGATING_PREFIXES = ("un", "dis", "in", "im", "il", "ir", "non", "anti", "de", "mis")

_CARDINALS = _list(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty")
#: Number words and what they stand for (compared with the digits written in the other text).
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_CARDINALS)} | {
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
    "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000", "half": "0.5",
    "first": "1st", "third": "3rd", "fourth": "4th", "fifth": "5th", "twice": "2x",
    "double": "2x", "triple": "3x", "dozen": "12",
}
# Number words that are more often not numbers: "quick one", "wait a second", "single sign-on",
# "first question".
for _word in ("one", "first", "second", "single", "couple"):
    NUMBER_WORDS.pop(_word, None)
#: "a third" / "one quarter": a fraction, where "third" alone is an ordinal.
FRACTION_WORDS = {"half": "0.5", "third": "0.333333", "quarter": "0.25", "fifth": "0.2"}

_WEEKDAYS = _list("monday tuesday wednesday thursday friday saturday sunday")
#: Words naming a time, each with one spelling for what it names ("Sundays" = "Sunday").
DATE_WORDS: dict[str, str] = {
    **{w: w for w in _WEEKDAYS}, **{w + "s": w for w in _WEEKDAYS},
    **{w: w for w in _list(
        "january february april june july august september october november december "
        "spring summer autumn winter christmas easter today tomorrow yesterday tonight morning "
        "afternoon evening night noon midnight sunrise sunset weekend weekday")},
    "weekends": "weekend", "weekdays": "weekday", "mornings": "morning", "evenings": "evening",
    "nights": "night", "afternoons": "afternoon",
}
#: Units of time: "per day" / "per week" asks for another figure; "annual" / "yearly" do not.
TIME_UNITS: dict[str, str] = {
    "minute": "minute", "minutes": "minute", "min": "minute", "mins": "minute", "hour": "hour",
    "hours": "hour", "hourly": "hour", "day": "day", "days": "day", "daily": "day", "week": "week",
    "weeks": "week", "weekly": "week", "month": "month", "months": "month", "monthly": "month",
    "year": "year", "years": "year", "yearly": "year", "annual": "year", "annually": "year",
}

#: Short function words: a rewording changes them freely ("How do I" / "How can I").
STOPWORDS = _split(
    "a an the i me my mine we our you your he she it its they them their this that these those "
    "is are was were be been being am do does did have has had will would shall should can could "
    "may might must need to of for in at by with about as from into onto up out and or but if so "
    "what which who whom whose when where why how there here please get got go going make any some "
    "just also too very much many really still ever s")

#: Greetings, thanks and spoken fillers: they never change what is asked ("Hi, quick one: ...").
FILLERS = _split(
    "hi hello hey hiya team please thanks thank cheers um uh er erm "
    "so like okay ok yeah well just wondering quick question one sorry bother silly many advance "
    "kind kindly regards")

#: How a request is put rather than what it asks: "Can you explain ...", "I want to know ...",
#: "Write / Draft / Compose an email ...". A rewording swaps these freely.
REQUEST_WORDS = _split(
    "explain tell know want wonder help let show give describe write compose draft craft create "
    "provide list share suggest recommend outline find out term called name mean means")

#: Contractions written out, so "What's" and "What is" are the same words.
CONTRACTIONS = {
    "can't": ("can", "not"), "cannot": ("can", "not"), "won't": ("will", "not"), "shan't": ("shall", "not"),
    "what's": ("what", "is"), "where's": ("where", "is"), "who's": ("who", "is"), "how's": ("how", "is"),
    "when's": ("when", "is"), "why's": ("why", "is"), "it's": ("it", "is"), "that's": ("that", "is"),
    "there's": ("there", "is"), "here's": ("here", "is"), "let's": ("let", "us"),
}
SUFFIXES = (("n't", "not"), ("'re", "are"), ("'ve", "have"), ("'ll", "will"), ("'d", "would"), ("'m", "am"))

#: Words a user swaps for one another without changing what is asked, one group a line: common
#: request vocabulary (verbs of getting, changing, starting, ending; everyday nouns and
#: adjectives). Only words that keep the meaning in nearly every question belong here.
_SYNONYM_GROUPS = (
    "get receive obtain", "change update modify edit amend alter", "start begin commence",
    "finish complete", "fast quick rapid speedy", "fastest quickest", "faster quicker",
    "big large huge", "bigger larger", "biggest largest", "little small tiny", "smallest tiniest",
    "buy purchase", "need require", "needed required", "help assist support", "shop store",
    "shops stores", "road street", "close shut", "closes shuts", "create make generate",
    "register enrol enroll signup", "cancel terminate", "fix repair mend", "find locate",
    "show display", "allow permit let", "allowed permitted", "book reserve", "booking reservation",
    "send post mail", "deliver ship", "delivery shipping", "price cost", "fee charge",
    "fees charges", "delete remove erase", "choose select pick", "check verify confirm",
    "answer reply respond", "talk speak", "contact reach", "inform notify tell", "use utilise utilize",
    "try attempt", "grade result mark score", "submit file lodge", "submitting filing lodging",
    "include cover", "includes covers", "appointment slot", "holiday vacation leave",
    "luggage baggage", "bag case", "job role position", "salary pay wage wages", "doctor gp physician",
    "medicine medication drug", "kids children", "kid child", "mom mother mum", "dad father",
    "car vehicle", "phone mobile cellphone", "flat apartment", "film movie", "films movies",
    "picture photo image", "pictures photos images", "mistake error", "mistakes errors",
    "problem issue", "problems issues", "main major principal primary chief", "rule policy",
    "area region", "whole entire", "total overall", "each every", "often frequently",
    "maybe perhaps", "about roughly approximately around", "enough sufficient", "correct right",
    "wrong incorrect", "happy glad", "sad unhappy", "hard difficult", "easy simple",
    "quickly fast", "begin start", "end finish", "link connect", "linked connected", "join connect",
    "shape influence affect", "shaped influenced affected", "reason rationale", "meaning definition",
    "worth value", "spend pay", "spent paid", "earn make", "earns makes", "left remaining",
    "fix correct", "write compose draft", "story tale", "opening first", "rules regulations",
)
#: ``word -> its group``, for :func:`services.cache.text.is_typo`'s "the same word" test.
SYNONYMS: dict[str, frozenset[str]] = {}
for _group in _SYNONYM_GROUPS:
    _words = frozenset(_group.split())
    for _w in _words:
        SYNONYMS[_w] = SYNONYMS.get(_w, frozenset()) | _words

#: Words that point a question one way or the other: up or down, good or bad. A question whose
#: words point up answered with one whose words point down ("pay more into my pension" / "pay
#: less") is about the opposite, however it is worded.
UP_WORDS = _split(
    "increase increased increasing increases raise raised raising more higher highest rise rising grow "
    "growing boost add adding extend extending upgrade maximum max most gain gains top")
DOWN_WORDS = _split(
    "decrease decreased decreasing decreases reduce reduced reducing lower lowest less fewer fall falling "
    "drop dropping cut cutting shrink remove removing shorten shortening downgrade minimum min least loss "
    "losses bottom")
GOOD_WORDS = _split(
    "good great best better excellent outstanding positive success successful successfully pass passed "
    "working properly safe approved accepted strong healthy benefit benefits advantage advantages pros "
    "favourite favorite like likes love")
BAD_WORDS = _split(
    "bad poor worst worse inadequate negative failure failed fail failing fault faulty broken unsafe "
    "dangerous rejected declined weak unhealthy drawback drawbacks disadvantage disadvantages cons "
    "problem problems dislike dislikes hate")
PERMITTED_WORDS = _split(
    "legal legally lawful lawfully allowed permitted allow permit can may entitled eligible")
FORBIDDEN_WORDS = _split(
    "illegal illegally unlawful unlawfully banned prohibited forbidden ban forbid never ineligible")

#: What a short request asks done, by the word that names the task: "write a poem" and "explain
#: what a poem is" want different answers whatever the topic. Words of one group name one task
#: ("fix" / "debug", "summarise" / "summarize"); ``explain`` also stands for "what is ...", "how
#: does ... work", "tell me about ..." and ``howto`` for "how do I ...", "how to ..." (see
#: :func:`services.cache.intent.task`). General English, one group a line.
_TASK_GROUPS = {
    "create": "write compose draft craft create generate build design invent produce draw paint sketch illustrate",
    "solve": "solve calculate compute evaluate answer respond reply",
    "fix": "fix debug correct proofread repair troubleshoot",
    "edit": "rewrite rephrase paraphrase reword edit polish",
    "improve": "improve optimise optimize enhance",
    "shorten": "shorten shorter condense trim",
    "translate": "translate translation",
    "summarise": "summarise summarize summary summarising summarizing tldr",
    "compare": "compare comparison vs versus difference differences",
    "play": "play",
    "quiz": "quiz ask",
    "review": "review critique",
    "organise": "prioritise prioritize rank organise organize",
    "recommend": "suggest recommend best",
    "howto": "steps tips guide teach",
    "explain": "explain describe define definition meaning why",
}
#: ``word -> the task it names``.
TASK_WORDS: dict[str, str] = {w: task for task, words in _TASK_GROUPS.items() for w in words.split()}
#: Tasks named by a verb: the first of these in a request wins over ``recommend``, ``howto`` and
#: ``explain``, which the framing of a question names ("how do I fix ..." asks a fix).
VERB_TASKS = frozenset(_TASK_GROUPS) - {"recommend", "howto", "explain"}
