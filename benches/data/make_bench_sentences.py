#!/usr/bin/env python3
"""Generate benches/data/bench_sentences.txt: 1024 English sentences of 12-20
words each, deterministically (fixed seed, no dependencies).

    python3 benches/data/make_bench_sentences.py            # rewrite the file
    python3 benches/data/make_bench_sentences.py --check    # verify it is up to date

Sentences are built from small hand-written templates and word lists, so they
look like ordinary prose (news, office, travel, science, home life) with a
varied vocabulary. Only random.Random(seed) with .random()/.choice()/.randint()
is used, whose sequences are stable across Python 3 versions.
"""

import argparse
import random
import sys
from pathlib import Path

SEED = 20240611
COUNT = 1024
MIN_WORDS, MAX_WORDS = 12, 20
OUT = Path(__file__).resolve().parent / "bench_sentences.txt"

NAMES = [
    "Alice", "Bruno", "Chiara", "Daniel", "Esther", "Farid", "Grace", "Hiroshi",
    "Ingrid", "Jamal", "Katarina", "Liam", "Mei", "Nadia", "Oscar", "Priya",
    "Quentin", "Rosa", "Samuel", "Tomasz", "Uma", "Viktor", "Wendy", "Yusuf", "Zoe",
]
PEOPLE = [
    "engineer", "teacher", "farmer", "nurse", "pilot", "librarian", "chef",
    "journalist", "architect", "student", "mechanic", "gardener", "accountant",
    "photographer", "researcher", "carpenter", "translator", "firefighter",
    "pharmacist", "shopkeeper", "musician", "surgeon", "electrician", "baker",
]
GROUPS = [
    "team", "committee", "family", "neighbors", "volunteers", "board",
    "research group", "orchestra", "city council", "support staff", "sales team",
]
RELATIVES = ["sister", "brother", "grandmother", "uncle", "cousin", "aunt", "father", "mother", "roommate", "manager"]
ADJS = [
    "old", "new", "quiet", "busy", "careful", "tired", "cheerful", "local",
    "young", "experienced", "nervous", "patient", "curious", "stubborn",
    "friendly", "famous", "retired", "clever", "generous", "anxious",
]
THING_ADJS = [
    "small", "heavy", "broken", "expensive", "wooden", "shiny", "ancient",
    "detailed", "colorful", "fragile", "secret", "annual", "unfinished",
    "handwritten", "digital", "spare", "strange", "official", "enormous", "rusty",
]
# (singular, plural)
THINGS = [
    ("report", "reports"), ("bicycle", "bicycles"), ("letter", "letters"),
    ("map", "maps"), ("camera", "cameras"), ("contract", "contracts"),
    ("painting", "paintings"), ("recipe", "recipes"), ("ladder", "ladders"),
    ("spreadsheet", "spreadsheets"), ("umbrella", "umbrellas"), ("invoice", "invoices"),
    ("telescope", "telescopes"), ("notebook", "notebooks"), ("suitcase", "suitcases"),
    ("package", "packages"), ("sculpture", "sculptures"), ("laptop", "laptops"),
    ("guitar", "guitars"), ("photograph", "photographs"), ("budget", "budgets"),
    ("garden hose", "garden hoses"), ("prototype", "prototypes"), ("manuscript", "manuscripts"),
    ("sandwich", "sandwiches"), ("key", "keys"), ("ticket", "tickets"), ("engine", "engines"),
]
# things that can be "about" a topic
ABOUT_THINGS = ["report", "letter", "map", "painting", "notebook", "manuscript",
                "photograph", "documentary", "lecture", "podcast", "poem", "brochure"]
TOPICS = [
    "medieval castles", "renewable energy", "honeybees", "the stock market",
    "Roman history", "volcanoes", "urban planning", "jazz piano", "deep sea fish",
    "climate policy", "ancient pottery", "machine learning", "mountain birds",
    "public transport", "organic farming", "space exploration", "tax law",
    "children's books", "coral reefs", "the printing press",
]
# (base, 3rd person present, past, past participle, gerund) -- all transitive
VERBS = [
    ("find", "finds", "found", "found", "finding"),
    ("repair", "repairs", "repaired", "repaired", "repairing"),
    ("deliver", "delivers", "delivered", "delivered", "delivering"),
    ("paint", "paints", "painted", "painted", "painting"),
    ("review", "reviews", "reviewed", "reviewed", "reviewing"),
    ("sell", "sells", "sold", "sold", "selling"),
    ("borrow", "borrows", "borrowed", "borrowed", "borrowing"),
    ("carry", "carries", "carried", "carried", "carrying"),
    ("inspect", "inspects", "inspected", "inspected", "inspecting"),
    ("hide", "hides", "hid", "hidden", "hiding"),
    ("describe", "describes", "described", "described", "describing"),
    ("photograph", "photographs", "photographed", "photographed", "photographing"),
    ("forget", "forgets", "forgot", "forgotten", "forgetting"),
    ("measure", "measures", "measured", "measured", "measuring"),
    ("pack", "packs", "packed", "packed", "packing"),
    ("lose", "loses", "lost", "lost", "losing"),
    ("build", "builds", "built", "built", "building"),
    ("clean", "cleans", "cleaned", "cleaned", "cleaning"),
    ("examine", "examines", "examined", "examined", "examining"),
    ("print", "prints", "printed", "printed", "printing"),
    ("translate", "translates", "translated", "translated", "translating"),
    ("return", "returns", "returned", "returned", "returning"),
    ("sketch", "sketches", "sketched", "sketched", "sketching"),
    ("steal", "steals", "stole", "stolen", "stealing"),
    ("approve", "approves", "approved", "approved", "approving"),
    ("replace", "replaces", "replaced", "replaced", "replacing"),
    ("write", "writes", "wrote", "written", "writing"),
    ("bring", "brings", "brought", "brought", "bringing"),
]
PLACES = [
    "in the kitchen", "at the train station", "near the old harbor", "behind the library",
    "on the top floor", "in a crowded cafe", "at the airport", "in the basement",
    "on the balcony", "at the farmers market", "in the hospital lobby", "by the river",
    "in the school gym", "at the museum entrance", "in the parking garage",
    "on the night train", "at the town hall", "in the garden shed", "on a mountain trail",
    "in the conference room", "at the corner bakery", "in the city archive",
]
TIMES_PAST = [
    "yesterday", "last Tuesday", "early this morning", "after lunch", "late last night",
    "two weeks ago", "during the storm", "before the meeting", "last summer",
    "on Friday afternoon", "over the holidays", "just before midnight", "in March",
]
TIMES_FUTURE = [
    "tomorrow", "next week", "on Monday", "before the deadline", "after the holidays",
    "by the end of the month", "later this evening", "next spring", "in two days",
]
ADVERBS = [
    "quickly", "carefully", "reluctantly", "quietly", "proudly", "suddenly",
    "eventually", "happily", "nervously", "patiently", "secretly", "finally",
]
SOURCES = [
    "the morning newspaper", "a local radio station", "the official statement",
    "several witnesses", "the annual report", "an anonymous email", "the weather service",
]
REASONS = [
    "the weather was terrible", "the deadline had moved", "nobody else was available",
    "the budget was cut", "the old one had failed", "the manager insisted",
    "the shop was closing early", "the train was delayed", "it seemed like a good idea",
]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "a dozen", "twenty", "several", "a few"]


def a(word):
    """Indefinite article + word."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def subject(r):
    k = r.randint(0, 5)
    if k == 0:
        return r.choice(NAMES)
    if k == 1:
        return f"the {r.choice(ADJS)} {r.choice(PEOPLE)}"
    if k == 2:
        return f"my {r.choice(RELATIVES)}"
    if k == 3:
        return f"our {r.choice(GROUPS)}"
    if k == 4:
        return f"{r.choice(NAMES)} and {r.choice(NAMES)}"
    return a(f"{r.choice(ADJS)} {r.choice(PEOPLE)}")


def singular_subject(r):
    while True:
        s = subject(r)
        if " and " not in s:
            return s


def obj(r):
    k = r.randint(0, 4)
    sing, plur = r.choice(THINGS)
    if k == 0:
        return f"the {r.choice(THING_ADJS)} {sing}"
    if k == 1:
        return f"{r.choice(NUMBERS)} {r.choice(THING_ADJS)} {plur}"
    if k == 2:
        return f"{a(r.choice(ABOUT_THINGS))} about {r.choice(TOPICS)}"
    if k == 3:
        return f"the {sing}"
    return f"an old {sing}" if r.random() < 0.3 else f"some {plur}"


def verb(r):
    return r.choice(VERBS)


def s_simple_past(r):
    return f"{subject(r)} {verb(r)[2]} {obj(r)} {r.choice(PLACES)} {r.choice(TIMES_PAST)}."


def s_because(r):
    return f"{r.choice(TIMES_PAST)}, {subject(r)} {verb(r)[2]} {obj(r)} because {r.choice(REASONS)}."


def s_question(r):
    return f"why did {subject(r)} {verb(r)[0]} {obj(r)} {r.choice(PLACES)}?"


def s_conditional(r):
    return (f"{subject(r)} will {verb(r)[0]} {obj(r)} {r.choice(TIMES_FUTURE)} "
            f"if {singular_subject(r)} {verb(r)[1]} {obj(r)}.")


def s_according(r):
    return f"according to {r.choice(SOURCES)}, {subject(r)} {r.choice(ADVERBS)} {verb(r)[2]} {obj(r)} {r.choice(PLACES)}."


def s_then(r):
    return f"{subject(r)} {verb(r)[2]} {obj(r)} {r.choice(PLACES)} and then {verb(r)[2]} {obj(r)}."


def s_reported(r):
    return f"{singular_subject(r)} said that {subject(r)} had {verb(r)[3]} {obj(r)} {r.choice(TIMES_PAST)}."


def s_after(r):
    return f"after {verb(r)[4]} {obj(r)}, {subject(r)} {verb(r)[2]} {obj(r)} {r.choice(PLACES)}."


def s_while(r):
    return f"{singular_subject(r)} {r.choice(ADVERBS)} {verb(r)[2]} {obj(r)} while {singular_subject(r)} was {verb(r)[4]} {obj(r)}."


def s_please(r):
    return (f"please {verb(r)[0]} {obj(r)} {r.choice(PLACES)} {r.choice(TIMES_FUTURE)}, "
            f"otherwise {subject(r)} will have to {verb(r)[0]} {obj(r)}.")


def s_exclaim(r):
    return f"I can't believe {subject(r)} {verb(r)[2]} {obj(r)} {r.choice(PLACES)} {r.choice(TIMES_PAST)}!"


def s_nobody(r):
    return f"nobody knew why {subject(r)} kept {verb(r)[4]} {obj(r)} {r.choice(PLACES)} every {r.choice(['morning', 'evening', 'weekend', 'winter'])}."


TEMPLATES = [s_simple_past, s_because, s_question, s_conditional, s_according, s_then,
             s_reported, s_after, s_while, s_please, s_exclaim, s_nobody]


def generate(seed=SEED, count=COUNT):
    r = random.Random(seed)
    out, seen = [], {}
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > count * 1000:
            raise RuntimeError("could not generate enough distinct sentences")
        s = r.choice(TEMPLATES)(r)
        s = s[0].upper() + s[1:]
        n = len(s.split())
        if not (MIN_WORDS <= n <= MAX_WORDS) or s in seen:
            continue
        seen[s] = True
        out.append(s)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--count", type=int, default=COUNT)
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be generated")
    args = ap.parse_args()

    text = "\n".join(generate(args.seed, args.count)) + "\n"
    if args.check:
        ok = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if ok else 'OUT OF DATE'}")
        sys.exit(0 if ok else 1)
    args.out.write_text(text, encoding="utf-8")
    lines = text.splitlines()
    words = [len(l.split()) for l in lines]
    print(f"wrote {args.out}: {len(lines)} sentences, {min(words)}-{max(words)} words, "
          f"{sum(words) / len(words):.1f} mean, {len(set(w for l in lines for w in l.split()))} distinct tokens")


if __name__ == "__main__":
    main()
