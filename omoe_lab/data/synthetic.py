"""The built-in offline multi-task suite: eight synthetic commonsense tasks in LLM-Adapters layout.

Each task mirrors the format of a public benchmark but is written from the project's own tables
(``omoe_lab.data.knowledge``), and each asks for a different kind of knowledge so that a mixture of
experts has something to specialise on:

==============  ===================================  =====================================
task            format                               what it tests
==============  ===================================  =====================================
boolq           true / false                         one property fact (floats? six legs?)
piqa            solution1 / solution2                which procedure reaches a physical goal
social_i_qa     answer1..3                           feelings, wants and motives of people
hellaswag       ending1..4                           the next step of an everyday routine
winogrande      option1 / option2                    who or what the blank refers to
ARC-Easy        answer1..4                           one-hop science facts
ARC-Challenge   answer1..4 (covering: answer1..5)    two facts chained (animal -> group -> trait)
openbookqa      answer1..4                           apply a stated rule to a new case
==============  ===================================  =====================================

Every entity (animal, object, tool, person, script, situation, ...) is assigned to train or test
once per task (about 75/25), so a task's test split only asks about entities its train split never
mentions. The correct option's position is balanced exactly (each block of ``k`` consecutive
records of a ``k``-option group uses every position once, so any prefix is balanced too); BoolQ
alternates true and false the same way.

Generation is deterministic: ``random.Random`` seeded with strings, tables walked in written order,
no set iteration. ``python -m omoe_lab.data.synthetic`` writes ``data/<task>/{train,test}.json``;
``--check`` regenerates in memory and exits 1 if the committed files differ.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..io import atomic_write_text
from . import knowledge as K

TASK_NAMES = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge",
              "openbookqa")
SPLITS = ("train", "test")
SPLIT_SIZES = {"train": 1000, "test": 250}
TEST_FRACTION = 0.25
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "data"
_ANSWER_LEAD_IN = "Please choose the correct answer to the question: "
# Strings that would confuse an LLM-Adapters parser if they appeared inside an option.
FORBIDDEN_IN_OPTIONS = ("Answer format", "Answer1:", "Solution1:", "Option1:", "Ending1:")


@dataclass(frozen=True)
class Layout:
    lead_in: str
    marker: str | None  # "Answer", "Solution", "Option", "Ending"; None for true/false
    option_counts: tuple[int, ...]


LAYOUTS = {
    "boolq": Layout("Please answer the following question with true or false, question: ", None, (2,)),
    "piqa": Layout("Please choose the correct solution to the question: ", "Solution", (2,)),
    "social_i_qa": Layout(_ANSWER_LEAD_IN, "Answer", (3,)),
    "hellaswag": Layout("Please choose the correct ending to complete the given sentence: ", "Ending", (4,)),
    "winogrande": Layout("Please choose the correct answer to fill in the blank to complete the given sentence: ",
                         "Option", (2,)),
    "ARC-Easy": Layout(_ANSWER_LEAD_IN, "Answer", (4,)),
    "ARC-Challenge": Layout(_ANSWER_LEAD_IN, "Answer", (4, 5)),
    "openbookqa": Layout(_ANSWER_LEAD_IN, "Answer", (4,)),
}
BOOLEAN_OPTIONS = ("true", "false")


@dataclass(frozen=True)
class SyntheticExample:
    """One generated record plus what it was built from (never written to the JSON files)."""

    task: str
    split: str
    family: str  # which generator made it, e.g. "animal_legs"
    question: str  # the text between the lead-in and the options
    options: tuple[str, ...]
    label: int
    entities: tuple[str, ...]  # held-out entities it mentions, as "kind:name"
    record: dict[str, str]


@dataclass(frozen=True)
class _Item:
    family: str
    question: str
    correct: str
    distractors: tuple[str, ...]
    entities: tuple[str, ...]


# ----------------------------------------------------------------------------- rendering
def render_record(task: str, question: str, options: Sequence[str], label: int) -> dict[str, str]:
    """The LLM-Adapters record for one example (BoolQ: options are ``("true", "false")``)."""
    layout = LAYOUTS[task]
    if layout.marker is None:
        instruction = f"{layout.lead_in}{question}?\n\nAnswer format: true/false"
        answer = options[label]
    else:
        word = layout.marker.lower()
        listed = "".join(f"\n\n{layout.marker}{i}: {option}" for i, option in enumerate(options, 1))
        labels = "/".join(f"{word}{i}" for i in range(1, len(options) + 1))
        instruction = f"{layout.lead_in}{question}{listed}\n\nAnswer format: {labels}"
        answer = f"{word}{label + 1}"
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def art(noun: str) -> str:
    """``noun`` with "a" or "an" in front."""
    first = noun.split()[0].lower()
    vowel = first[0] in "aeiou" and not first.startswith(("uni", "use", "eu", "one"))
    return ("an " if vowel or first in ("hour", "honest") else "a ") + noun


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(text: str, person: K.Person, other: K.Person | None = None) -> str:
    other = other or person
    return text.format(N=person.name, he=person.he, him=person.him, his=person.his,
                       O=other.name, o_he=other.he, o_him=other.him, o_his=other.his)


# ----------------------------------------------------------------------------- held-out entities
class _EntitySplit:
    """Assigns every entity name of one task to train or test, once, whatever kind it is used as."""

    def __init__(self, task: str, seed: int):
        self.task, self.seed, self.side = task, seed, {}

    def assign(self, kind: str, names: Sequence[str]) -> dict[str, list[str]]:
        unique = list(dict.fromkeys(names))
        fresh = [n for n in unique if n not in self.side]
        random.Random(f"omoe_lab.synthetic/{self.seed}/{self.task}/entities/{kind}").shuffle(fresh)
        already = sum(self.side.get(n) == "test" for n in unique)
        wanted = max(0, round(len(unique) * TEST_FRACTION) - already)
        for i, name in enumerate(fresh):
            self.side[name] = "test" if i < wanted else "train"
        return {split: [n for n in unique if self.side[n] == split] for split in SPLITS}


def _pools(task: str, seed: int, kinds: dict[str, Sequence[str]]) -> dict[str, SimpleNamespace]:
    splitter = _EntitySplit(task, seed)
    assigned = {kind: splitter.assign(kind, names) for kind, names in kinds.items()}
    return {split: SimpleNamespace(**{kind: assigned[kind][split] for kind in kinds}) for split in SPLITS}


PEOPLE = K.people()
_PERSON = {p.name: p for p in PEOPLE}


def _persons(names: Sequence[str]) -> list[K.Person]:
    return [_PERSON[n] for n in names]


# ----------------------------------------------------------------------------- collecting
Draw = Callable[[random.Random, bool], "_Item | None"]


def _quotas(n: int, weights: Sequence[float]) -> list[int]:
    total = sum(weights)
    raw = [n * w / total for w in weights]
    quotas = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (quotas[i] - raw[i], i))
    for i in by_remainder[: n - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _check_item(task: str, item: _Item) -> None:
    options = (item.correct, *item.distractors)
    if LAYOUTS[task].marker is not None:
        if len(set(options)) != len(options):
            raise AssertionError(f"{task}/{item.family}: repeated option in {options}")
        if len(options) not in LAYOUTS[task].option_counts:
            raise AssertionError(f"{task}/{item.family}: {len(options)} options")
    for text in (item.question, *options):
        if not text or text != text.strip() or "\n" in text or "{" in text or "}" in text:
            raise AssertionError(f"{task}/{item.family}: malformed text {text!r}")
    for option in options:
        if any(marker.lower() in option.lower() for marker in FORBIDDEN_IN_OPTIONS):
            raise AssertionError(f"{task}/{item.family}: option holds a marker: {option!r}")


def _collect(task: str, families: Sequence[tuple[str, float, Draw]], n: int, rng: random.Random,
             banned: set[str]) -> list[_Item]:
    """``n`` items with distinct questions (none in ``banned``), shared out by family weight.

    BoolQ draws alternate between wanting a true and a false answer; other tasks ignore ``want``.
    A family that runs dry hands its remaining quota to the others.
    """
    items: list[_Item] = []
    seen = set(banned)
    truths = [0, 0]

    def draw_one(draw: Draw) -> bool:
        want = truths[0] <= truths[1]
        item = draw(rng, want)
        if item is None or item.question in seen:
            return False
        if task == "boolq" and (item.correct == "true") != want:
            return False
        _check_item(task, item)
        seen.add(item.question)
        items.append(item)
        truths[item.correct != "true"] += 1
        return True

    for (name, _, draw), quota in zip(families, _quotas(n, [w for _, w, _ in families])):
        got = tries = 0
        while got < quota and tries < 60 * quota + 200:
            tries += 1
            got += draw_one(draw)
    stalled = 0
    while len(items) < n:
        added = sum(draw_one(draw) for _, _, draw in families if len(items) < n)
        stalled = 0 if added else stalled + 1
        if stalled > 2000:
            raise RuntimeError(f"{task}: the tables only gave {len(items)} distinct questions, {n} wanted")
    return items


def _place(task: str, items: list[_Item], rng: random.Random) -> list[tuple[_Item, tuple[str, ...], int]]:
    """Shuffle the items and put each correct option at a balanced position."""
    rng.shuffle(items)
    if LAYOUTS[task].marker is None:
        true_items = [it for it in items if it.correct == "true"]
        false_items = [it for it in items if it.correct == "false"]
        ordered = []
        for pair in zip(true_items, false_items):
            pair = list(pair)
            rng.shuffle(pair)
            ordered += pair
        ordered += true_items[len(false_items):] + false_items[len(true_items):]
        return [(it, BOOLEAN_OPTIONS, BOOLEAN_OPTIONS.index(it.correct)) for it in ordered]
    positions: dict[int, list[int]] = {}
    placed = []
    for item in items:
        k = 1 + len(item.distractors)
        queue = positions.setdefault(k, [])
        if not queue:
            block = list(range(k))
            rng.shuffle(block)
            queue.extend(block)
        label = queue.pop(0)
        others = list(item.distractors)
        rng.shuffle(others)
        options = tuple(others[:label] + [item.correct] + others[label:])
        placed.append((item, options, label))
    return placed


# ----------------------------------------------------------------------------- boolq: property facts
_PROPERTY_QUESTIONS = {
    "floats": ("does {a} float in water", "would {a} float if you dropped it in a pond"),
    "magnetic": ("would a magnet pick up {a}", "is {a} attracted to a magnet"),
    "conducts": ("does {a} conduct electricity", "can electricity flow through {a}"),
    "fragile": ("would {a} shatter if dropped on a stone floor", "is {a} likely to break if it falls on a hard floor"),
    "melts": ("would {a} melt if left in the hot sun", "does {a} melt on a hot summer day"),
    "absorbs": ("can {a} soak up water", "would {a} absorb a spill of water"),
    "transparent": ("can you see through {a}", "is {a} see-through"),
    "rusts": ("can {a} rust if left out in the rain", "will {a} rust if it stays wet for weeks"),
    "burns": ("would {a} burn if you held it in a campfire", "can {a} catch fire"),
}
_MADE_OF_CLOSE = {"clay": ("stone",), "stone": ("clay",), "paper": ("cardboard",), "cardboard": ("paper",)}
_COVER_PHRASE = {"fur": "fur", "feathers": "feathers", "scales": "scales",
                 "smooth, moist skin": "smooth, moist skin", "a hard outer skeleton": "a hard outer skeleton"}
# Coverings that would be half true for a group (birds' legs have scales, bees look fuzzy, ...).
_COVER_NOT_ASKED_FALSE = {"bird": ("scales",), "fish": ("smooth, moist skin",), "insect": ("fur",),
                          "arachnid": ("fur",)}
_NUMBER = {0: "no", 2: "two", 4: "four", 6: "six", 8: "eight"}


def _boolq_families(P) -> list[tuple[str, float, Draw]]:
    things = [K.THING_BY_NAME[n] for n in P.thing]
    animals = [K.ANIMAL_BY_NAME[n] for n in P.animal]
    rooms = [(n, r) for n, r in K.ROOM_ITEMS if n in P.room_item]

    def thing_property(rng, want):
        # Property first, then a thing with the wanted answer: every property is asked ~50/50.
        prop = rng.choice(K.PROPERTIES)
        matching = [t for t in things if t.prop(prop) is want]
        if not matching:
            return None
        thing = rng.choice(matching)
        question = rng.choice(_PROPERTY_QUESTIONS[prop]).format(a=art(thing.name))
        return _Item(f"thing_{prop}", question, str(want).lower(), (), (f"thing:{thing.name}",))

    def thing_made_of(rng, want):
        thing = rng.choice(things)
        if thing.made_of is None:
            return None
        if want:
            word = thing.made_of
        else:
            close = (thing.made_of, *_MADE_OF_CLOSE.get(thing.made_of, ()))
            word = rng.choice([w for w in K.MADE_OF_WORDS if w not in close])
        return _Item("thing_made_of", f"is {art(thing.name)} usually made of {word}", str(want).lower(), (),
                     (f"thing:{thing.name}",))

    def thing_heavier(rng, want):
        x, y = rng.sample(things, 2)
        if x.weight is None or y.weight is None or abs(x.weight - y.weight) < 2 or (x.weight > y.weight) != want:
            return None
        return _Item("thing_heavier", f"is {art(x.name)} heavier than {art(y.name)}", str(want).lower(), (),
                     (f"thing:{x.name}", f"thing:{y.name}"))

    def room(rng, want):
        if not rooms:
            return None
        name, home = rng.choice(rooms)
        where = home if want else rng.choice(K.ROOM_NEVER[home])
        return _Item("room", f"would you usually find {art(name)} in a {where}", str(want).lower(), (),
                     (f"room_item:{name}",))

    def animal_legs(rng, want):
        animal = rng.choice(animals)
        if animal.legs is None:
            return None
        if want:
            n = animal.legs
        else:
            n = rng.choice([k for k in (0, 2, 4, 6, 8) if k != animal.legs])
        question = (f"is {art(animal.name)} an animal with no legs" if n == 0
                    else f"does {art(animal.name)} have {_NUMBER[n]} legs")
        return _Item("animal_legs", question, str(want).lower(), (), (f"animal:{animal.name}",))

    def animal_flag(family, attribute, phrasings):
        def draw(rng, want):
            matching = [a for a in animals if getattr(a, attribute) is want]
            if not matching:
                return None
            animal = rng.choice(matching)
            question = rng.choice(phrasings).format(a=art(animal.name))
            return _Item(family, question, str(want).lower(), (), (f"animal:{animal.name}",))
        return draw

    def animal_diet(rng, want):
        meat = rng.random() < 0.5
        matching = [a for a in animals if a.diet and ((a.diet != "herbivore") == meat) == want]
        animal = rng.choice(matching)
        question = (f"does {art(animal.name)} eat other animals" if meat
                    else f"does {art(animal.name)} eat only plants")
        return _Item("animal_diet", question, str(want).lower(), (), (f"animal:{animal.name}",))

    def animal_sound(rng, want):
        animal = rng.choice(animals)
        if not animal.sounds:
            return None
        sound = animal.sounds[0] if want else rng.choice([s for s in K.FALSE_SOUNDS if s not in animal.sounds])
        return _Item("animal_sound", f"does {art(animal.name)} {sound}", str(want).lower(), (),
                     (f"animal:{animal.name}",))

    def animal_bigger(rng, want):
        x, y = rng.sample(animals, 2)
        if x.size is None or y.size is None or abs(x.size - y.size) < 2 or (x.size > y.size) != want:
            return None
        return _Item("animal_bigger", f"is {art(x.name)} bigger than {art(y.name)}", str(want).lower(), (),
                     (f"animal:{x.name}", f"animal:{y.name}"))

    def animal_covering(rng, want):
        animal = rng.choice(animals)
        if animal.covering is None:
            return None
        if want:
            covering = animal.covering
        else:
            skip = (animal.covering, *_COVER_NOT_ASKED_FALSE.get(animal.group, ()))
            covering = rng.choice([c for c in K.COVERINGS if c not in skip])
        return _Item("animal_covering", f"does {art(animal.name)} have {_COVER_PHRASE[covering]}",
                     str(want).lower(), (), (f"animal:{animal.name}",))

    return [
        ("thing_property", 3.0, thing_property),
        ("thing_made_of", 0.6, thing_made_of),
        ("thing_heavier", 0.6, thing_heavier),
        ("room", 0.7, room),
        ("animal_legs", 0.8, animal_legs),
        ("animal_flies", 0.5, animal_flag("animal_flies", "flies", ("can {a} fly", "is {a} able to fly"))),
        ("animal_water", 0.4, animal_flag("animal_water", "in_water",
                                          ("does {a} live in water", "does {a} spend its whole life in water"))),
        ("animal_eggs", 0.4, animal_flag("animal_eggs", "lays_eggs", ("does {a} lay eggs",
                                                                     "does {a} hatch from an egg"))),
        ("animal_backbone", 0.4, animal_flag("animal_backbone", "backbone", ("does {a} have a backbone",))),
        ("animal_diet", 0.6, animal_diet),
        ("animal_sound", 0.5, animal_sound),
        ("animal_bigger", 0.6, animal_bigger),
        ("animal_covering", 0.6, animal_covering),
    ]


# ----------------------------------------------------------------------------- piqa: tools and materials
_PIQA_FRAMES = ("How do you {goal}?", "What is the best way to {goal}?", "How can you {goal}?")
_PIQA_NAMED = ("{N} wants to {goal}. What should {he} do?", "{N} needs to {goal}. Which way works?",
               "{N} is trying to {goal}. What should {he} do?")


def _piqa_question(rng, goal: str, people: list[K.Person]) -> tuple[str, tuple[str, ...]]:
    if rng.random() < 0.2:
        return rng.choice(_PIQA_FRAMES).format(goal=goal), ()
    person = rng.choice(people)
    return rng.choice(_PIQA_NAMED).format(goal=goal, N=person.name, he=person.he), (f"person:{person.name}",)


def _piqa_families(P) -> list[tuple[str, float, Draw]]:
    tools = [t for t in K.TOOLS if t.name in P.tool]
    things = [K.THING_BY_NAME[n] for n in P.thing]
    people = _persons(P.person)

    def tool_goal(rng, want):
        tool = rng.choice(tools)
        goal, method = rng.choice(tool.goals)
        unrelated = [t for t in tools if not set(t.tags) & set(tool.tags)]
        same_area = [t for t in unrelated if t.area == tool.area]
        other = rng.choice(same_area if same_area and rng.random() < 0.5 else unrelated)
        question, people_used = _piqa_question(rng, goal, people)
        return _Item("tool", question, method.format(tool=art(tool.name)), (method.format(tool=art(other.name)),),
                     (f"tool:{tool.name}", f"tool:{other.name}", *people_used))

    def material_goal(rng, want):
        key, goal, method, prop, value, max_size = rng.choice(K.MATERIAL_GOALS)
        fits = [t for t in things if t.size is not None and t.size <= max_size and t.material != "ice"
                and (key != "kindling" or t.material == "paper")]
        good = [t for t in fits if t.prop(prop) is value]
        bad = [t for t in fits if t.prop(prop) is (not value)]
        if not good or not bad:
            return None
        right, wrong = rng.choice(good), rng.choice(bad)
        question, people_used = _piqa_question(rng, goal, people)
        return _Item(f"material_{key}", question, method.format(obj=art(right.name)),
                     (method.format(obj=art(wrong.name)),),
                     (f"thing:{right.name}", f"thing:{wrong.name}", *people_used))

    def paperweight(rng, want):
        goal, method = K.PAPERWEIGHT_GOAL
        heavy = [t for t in things if t.weight is not None and t.weight >= 3 and t.size is not None and t.size <= 3]
        light = [t for t in things if t.weight == 1 and t.size is not None and t.size <= 2]
        if not heavy or not light:
            return None
        right, wrong = rng.choice(heavy), rng.choice(light)
        question, people_used = _piqa_question(rng, goal, people)
        return _Item("material_paperweight", question, method.format(obj=art(right.name)),
                     (method.format(obj=art(wrong.name)),),
                     (f"thing:{right.name}", f"thing:{wrong.name}", *people_used))

    return [("tool", 3.0, tool_goal), ("material", 1.2, material_goal), ("paperweight", 0.2, paperweight)]


# ----------------------------------------------------------------------------- social_i_qa: people
_FEEL_QUESTIONS = ("How would {N} feel afterwards?", "How does {N} most likely feel?",
                   "What is {N} probably feeling now?")
_WANT_QUESTIONS = ("What will {N} want to do next?", "What will {N} most likely do next?")
_SIQA_QUESTIONS = {"intent": ("Why did {N} do this?", "What was {N} trying to do?"),
                   "need": ("What did {N} need to do before this?", "What did {N} have to do first?"),
                   "other_feel": ("How would {O} feel as a result?", "How does {O} most likely feel now?")}


def _valence(feeling: str) -> int:
    if feeling in K.POSITIVE_FEELINGS:
        return 1
    if feeling in K.NEGATIVE_FEELINGS:
        return -1
    return K.EXTRA_FEELINGS[feeling]


def _siqa_families(P) -> list[tuple[str, float, Draw]]:
    situations = [s for s in K.SITUATIONS if s.key in P.situation]
    people = _persons(P.person)

    def setup(rng, need_field):
        situation = rng.choice(situations)
        if getattr(situation, need_field) is None:
            return None
        person, other = rng.sample(people, 2)
        entities = (f"situation:{situation.key}", f"person:{person.name}", f"person:{other.name}")
        return situation, person, other, entities

    def feeling(field, questions):
        def draw(rng, want):
            got = setup(rng, field)
            if got is None:
                return None
            situation, person, other, entities = got
            answer = getattr(situation, field)
            opposite = K.NEGATIVE_FEELINGS if _valence(answer) > 0 else K.POSITIVE_FEELINGS
            # Only feelings of the other sign, and none the situation lists as also possible.
            distractors = tuple(rng.sample([f for f in opposite if f not in situation.close], 2))
            question = _fill(situation.text, person, other) + " " + _fill(rng.choice(questions), person, other)
            return _Item(field, question, answer, distractors, entities)
        return draw

    def phrase(field, questions):
        def draw(rng, want):
            got = setup(rng, field)
            if got is None:
                return None
            situation, person, other, entities = got
            # Wants of a situation with the other sign rarely fit; motives and needs are tied to the act.
            sources = [s for s in K.SITUATIONS if getattr(s, field) and s.topic != situation.topic
                       and (field != "want" or s.valence * (situation.valence or 1) < 0)]
            answer = _fill(getattr(situation, field), person, other)
            pool = list(dict.fromkeys(_fill(getattr(s, field), person, other) for s in sources))
            pool = [p for p in pool if p != answer]
            distractors = tuple(rng.sample(pool, 2))
            question = _fill(situation.text, person, other) + " " + _fill(rng.choice(questions), person, other)
            return _Item(field, question, answer, distractors, entities)
        return draw

    return [
        ("feel", 2.5, feeling("feel", _FEEL_QUESTIONS)),
        ("other_feel", 1.0, feeling("other_feel", _SIQA_QUESTIONS["other_feel"])),
        ("want", 2.5, phrase("want", _WANT_QUESTIONS)),
        ("intent", 1.2, phrase("intent", _SIQA_QUESTIONS["intent"])),
        ("need", 1.2, phrase("need", _SIQA_QUESTIONS["need"])),
    ]


# ----------------------------------------------------------------------------- hellaswag: event scripts
# Steps of scripts in one cluster can look like a next step of each other (both run a tap, both
# dry off with a towel), so wrong endings only come from scripts of another cluster.
_SCRIPT_CLUSTER = {"kitchen": "indoors", "bathroom": "indoors", "home": "indoors", "pets": "indoors",
                   "workshop": "indoors", "garden": "outside", "outdoors": "outside", "sports": "games",
                   "play": "games", "errand": "errand", "craft": "craft"}


def _hellaswag_families(P) -> list[tuple[str, float, Draw]]:
    scripts = [s for s in K.SCRIPTS if s.activity in P.script]
    people = _persons(P.person)

    def next_step(rng, want):
        script = rng.choice(scripts)
        k = rng.randrange(1, len(script.steps))
        shown = 2 if k >= 2 and rng.random() < 0.5 else 1
        if rng.random() < 0.5:
            person = rng.choice(people)
            subject, he, his, entities = person.name, person.he, person.his, (f"person:{person.name}",)
        else:
            noun, gender = rng.choice(K.PEOPLE_NOUNS)
            he, _, his = K.PRONOUNS[gender]
            subject, entities = noun, ()

        def sentence(step, first=False):
            return f"{subject if first else cap(he)} {step.format(his=his)}."

        context = " ".join(sentence(script.steps[i], first=(i == k - shown)) for i in range(k - shown, k))
        correct = sentence(script.steps[k])
        far = [i for i in range(len(script.steps)) if abs(i - k) >= 2]
        wrong = [sentence(script.steps[rng.choice(far)])] if far and rng.random() < 0.7 else []
        others = [s for s in K.SCRIPTS if _SCRIPT_CLUSTER[s.area] != _SCRIPT_CLUSTER[script.area]]
        while len(wrong) < 3:
            step = sentence(rng.choice(rng.choice(others).steps))
            if step not in wrong and step != correct:
                wrong.append(step)
        question = f"{script.activity}: {context}"
        return _Item("next_step", question, correct, tuple(wrong), (f"script:{script.activity}", *entities))

    return [("next_step", 1.0, next_step)]


# ----------------------------------------------------------------------------- winogrande: blanks
def _wino_families(P) -> list[tuple[str, float, Draw]]:
    frames = [f for f in K.PEOPLE_TWINS if f[0] in P.frame]
    people = _persons(P.person)
    things = [K.THING_BY_NAME[n] for n in P.thing]
    handy = [t for t in things if t.size is not None and t.size <= 3 and t.weight is not None and t.weight <= 3]
    animals = set(P.animal)
    pairs = [(a, b) for a, b in K.PREDATOR_PREY if a in animals and b in animals]

    def people_twin(rng, want):
        key, *twins = rng.choice(frames)
        sentence, who = rng.choice(twins)
        a, b = rng.sample(people, 2)
        answer, other = (a, b) if who == "A" else (b, a)
        return _Item("people", sentence.format(A=a.name, B=b.name), answer.name, (other.name,),
                     (f"frame:{key}", f"person:{a.name}", f"person:{b.name}"))

    def property_twin(rng, want):
        key, sentence, prop, value = rng.choice(K.PROPERTY_TWINS)
        yes = [t for t in handy if t.prop(prop) is value]
        no = [t for t in handy if t.prop(prop) is (not value)]
        if not yes or not no:
            return None
        answer, other = rng.choice(yes), rng.choice(no)
        x, y = (answer, other) if rng.random() < 0.5 else (other, answer)
        person = rng.choice(people)
        return _Item(f"property_{key}", sentence.format(N=person.name, X=x.name, Y=y.name), answer.name,
                     (other.name,), (f"thing:{x.name}", f"thing:{y.name}", f"person:{person.name}"))

    def fit_twin(rng, want):
        containers = [t for t in things if t.holds is not None]
        if not containers:
            return None
        box = rng.choice(containers)
        big = [t for t in things if t.size is not None and box.holds + 2 <= t.size <= box.holds + 3]
        if not big:
            return None
        item = rng.choice(big)
        sentence, who = rng.choice(K.FIT_TWINS)
        person = rng.choice(people)
        answer, other = (item, box) if who == "X" else (box, item)
        named = (f"person:{person.name}",) if "{N}" in sentence else ()
        return _Item("fit", sentence.format(N=person.name, X=item.name, Y=box.name), answer.name, (other.name,),
                     (f"thing:{item.name}", f"thing:{box.name}", *named))

    def lift_twin(rng, want):
        heavy = [t for t in things if t.weight is not None and t.weight >= 5]
        light = [t for t in things if t.weight is not None and t.weight <= 2]
        if not heavy or not light:
            return None
        x, y = rng.choice(heavy), rng.choice(light)
        sentence, who = rng.choice(K.LIFT_TWINS)
        person = rng.choice(people)
        answer, other = (x, y) if who == "X" else (y, x)
        return _Item("lift", sentence.format(N=person.name, X=x.name, Y=y.name), answer.name, (other.name,),
                     (f"thing:{x.name}", f"thing:{y.name}", f"person:{person.name}"))

    def predator_twin(rng, want):
        if not pairs:
            return None
        pred, prey = rng.choice(pairs)
        sentence, who = rng.choice(K.PREDATOR_TWINS)
        answer, other = (pred, prey) if who == "pred" else (prey, pred)
        return _Item("predator", sentence.format(pred=pred, prey=prey), answer, (other,),
                     (f"animal:{pred}", f"animal:{prey}"))

    return [("people", 2.6, people_twin), ("property", 2.0, property_twin), ("fit", 0.6, fit_twin),
            ("lift", 0.6, lift_twin), ("predator", 0.3, predator_twin)]


# ----------------------------------------------------------------------------- ARC-Easy: one-hop facts
_LOOKALIKE = {"whale": "fish", "dolphin": "fish", "bat": "bird", "spider": "insect", "scorpion": "insect",
              "tick": "insect", "salamander": "reptile", "newt": "reptile", "penguin": "fish", "turtle": "amphibian"}
_CLASS_QUESTIONS = ("{A} is an example of which kind of animal?", "To which group of animals does the {x} belong?",
                    "Which group of animals includes the {x}?")
_PICK_CLASS = ("{N} is making a poster about {plural}. Which animal belongs on the poster?",
               "{N} sorted animal cards into groups. Which card belongs with the {plural}?",
               "{N} read that one of these animals is {a_group}. Which one is it?")


def _arc_easy_families(P) -> list[tuple[str, float, Draw]]:
    animals = [K.ANIMAL_BY_NAME[n] for n in P.animal]
    classed = [a for a in animals if a.group in K.CLASS_GROUPS]
    people = _persons(P.person)
    substances = [s for s in K.SUBSTANCES if s[0] in P.substance]
    body = [b for b in K.BODY_PARTS if b[0] in P.body_part]
    plant = [b for b in K.PLANT_PARTS if b[0] in P.plant_part]
    instruments = [i for i in K.INSTRUMENTS if i[0] in P.instrument]
    facts = [f for f in K.SCIENCE_FACTS if f[0] in P.fact]
    young = [(a, y) for a, y in K.YOUNG if a in P.animal]

    def animal_class(rng, want):
        animal = rng.choice(classed)
        wrong = [g for g in K.CLASS_GROUPS if g != animal.group]
        rng.shuffle(wrong)
        lookalike = _LOOKALIKE.get(animal.name)
        if lookalike:
            wrong.remove(lookalike)
            wrong.insert(0, lookalike)
        question = rng.choice(_CLASS_QUESTIONS).format(A=cap(art(animal.name)), x=animal.name)
        return _Item("animal_class", question, animal.group, tuple(wrong[:3]), (f"animal:{animal.name}",))

    def pick_class(rng, want):
        group = rng.choice(K.CLASS_GROUPS)
        members = [a for a in classed if a.group == group]
        if not members:
            return None
        answer = rng.choice(members)
        others = [a for a in animals if a.group != group]
        if len(others) < 3:
            return None
        wrong = rng.sample(others, 3)
        person = rng.choice(people)
        question = rng.choice(_PICK_CLASS).format(N=person.name, plural=K.GROUP_PLURAL[group], a_group=art(group))
        return _Item("pick_class", question, answer.name, tuple(a.name for a in wrong),
                     (f"person:{person.name}", *(f"animal:{a.name}" for a in (answer, *wrong))))

    def diet(rng, want):
        animal = rng.choice([a for a in animals if a.diet])
        question = rng.choice(("Based on what it eats, {a} is best described as which kind of animal?",
                               "Which word describes {a}, based on the food it eats?")).format(a=art(animal.name))
        return _Item("diet", question, animal.diet, tuple(d for d in K.DIETS if d != animal.diet),
                     (f"animal:{animal.name}",))

    def baby(rng, want):
        if not young:
            return None
        name, word = rng.choice(young)
        wrong = rng.sample([w for w in K.YOUNG_WORDS if w != word], 3)
        question = rng.choice(("What is a baby {x} called?", "What do we call a young {x}?")).format(x=name)
        return _Item("young", question, word, tuple(wrong), (f"animal:{name}",))

    def state(rng, want):
        name, answer = rng.choice(substances)
        question = rng.choice(("At room temperature, what state of matter is {s}?",
                               "In which state of matter is {s} found at room temperature?")).format(s=name)
        return _Item("state", question, answer, tuple(s for s in K.STATES if s != answer), (f"substance:{name}",))

    def pick_state(rng, want):
        target = rng.choice(K.STATES[:3])
        yes = [s for s, st in substances if st == target]
        no = [s for s, st in substances if st != target]
        if not yes or len(no) < 3:
            return None
        answer, wrong = rng.choice(yes), rng.sample(no, 3)
        person = rng.choice(people)
        question = rng.choice(("{N} is sorting a list of materials. Which one is a {st} at room temperature?",
                               "{N} has to find the {st} in a list. Which of these is a {st} at room temperature?")
                              ).format(N=person.name, st=target)
        return _Item("pick_state", question, answer, tuple(wrong),
                     (f"person:{person.name}", *(f"substance:{s}" for s in (answer, *wrong))))

    def part_job(family, table, which_q, job_q):
        def draw(rng, want):
            if len(table) < 1:
                return None
            name, does, job = rng.choice(table)
            full = K.BODY_PARTS if family == "body" else K.PLANT_PARTS
            others = [row for row in full if row[0] != name]
            wrong = rng.sample(others, 3)
            if rng.random() < 0.5:
                return _Item(f"{family}_which", which_q.format(does=does), name, tuple(r[0] for r in wrong),
                             (f"{family}_part:{name}",))
            return _Item(f"{family}_job", job_q.format(part=name), job, tuple(r[2] for r in wrong),
                         (f"{family}_part:{name}",))
        return draw

    def instrument(rng, want):
        name, purposes = rng.choice(instruments)
        wrong = rng.sample([i[0] for i in K.INSTRUMENTS if i[0] != name], 3)
        purpose = rng.choice(purposes)
        if rng.random() < 0.3:
            return _Item("instrument", f"Which tool would a student use to {purpose}?", name, tuple(wrong),
                         (f"instrument:{name}",))
        person = rng.choice(people)
        question = rng.choice(("{N} wants to {p}. Which tool should {he} use?",
                               "Which tool does {N} need to {p}?")).format(N=person.name, he=person.he, p=purpose)
        return _Item("instrument", question, name, tuple(wrong), (f"instrument:{name}", f"person:{person.name}"))

    def fact(rng, want):
        key, question, answer, wrong = rng.choice(facts)
        entities = (f"fact:{key}",)
        if rng.random() < 0.6:
            person = rng.choice(people)
            question = f"On a science quiz, {person.name} reads: {question}"
            entities += (f"person:{person.name}",)
        return _Item("fact", question, answer, wrong, entities)

    return [
        ("animal_class", 1.6, animal_class), ("pick_class", 1.6, pick_class), ("diet", 0.8, diet),
        ("young", 0.5, baby), ("state", 0.7, state), ("pick_state", 1.2, pick_state),
        ("body", 0.9, part_job("body", body, "Which body part {does}?", "What is the main job of {part}?")),
        ("plant", 0.5, part_job("plant", plant, "Which part of a plant {does}?",
                                "What is the main job of {part} of a plant?")),
        ("instrument", 1.0, instrument), ("fact", 0.6, fact),
    ]


# ----------------------------------------------------------------------------- ARC-Challenge: two hops
_TRAITS = (  # (key, verb phrase, is correct, is a fair distractor)
    ("gills", "breathes with gills its whole life", lambda a: a.group == "fish",
     lambda a: a.group in ("mammal", "bird", "reptile")),
    ("milk", "feeds its babies milk", lambda a: a.group == "mammal",
     lambda a: a.group in ("bird", "reptile", "fish", "amphibian", "insect")),
    ("six_legs", "has six legs", lambda a: a.group == "insect", lambda a: a.group != "insect"),
    ("backbone", "has a backbone", lambda a: a.backbone, lambda a: not a.backbone),
    ("no_backbone", "does not have a backbone", lambda a: not a.backbone, lambda a: a.backbone),
    ("warm", "is warm-blooded", lambda a: a.warm_blooded is True, lambda a: a.warm_blooded is False),
    ("cold", "is cold-blooded", lambda a: a.warm_blooded is False, lambda a: a.warm_blooded is True),
    ("eggs", "hatches from an egg", lambda a: a.backbone and a.lays_eggs is True, lambda a: a.lays_eggs is False),
)
_OBJECT_TESTS = (  # (property, value, verb phrase)
    ("magnetic", True, "would stick to a magnet"),
    ("floats", True, "would float in a tub of water"),
    ("floats", False, "would sink to the bottom of a pond"),
    ("conducts", True, "would let electricity flow through it"),
    ("conducts", False, "would block electricity from flowing through it"),
    ("fragile", True, "would most likely shatter if dropped on a tile floor"),
    ("melts", True, "would melt if left outside on a hot summer day"),
    ("rusts", True, "would rust if left out in the rain"),
    ("transparent", True, "lets light through so you can see clearly through it"),
    ("absorbs", True, "would soak up spilled water"),
)


def _arc_challenge_families(P) -> list[tuple[str, float, Draw]]:
    animals = [K.ANIMAL_BY_NAME[n] for n in P.animal]
    things = [K.THING_BY_NAME[n] for n in P.thing]
    people = _persons(P.person)

    def covering(rng, want):
        animal = rng.choice([a for a in animals if a.covering])
        wrong = tuple(c for c in K.COVERINGS if c != animal.covering)
        if rng.random() < 0.4:
            question = rng.choice(("What covers the body of {a}?",
                                   "Which body covering would you expect to find on {a}?")).format(a=art(animal.name))
            return _Item("covering", question, animal.covering, wrong, (f"animal:{animal.name}",))
        person = rng.choice(people)
        question = rng.choice(("{N} is drawing {a} for a science report. What should {he} draw covering its body?",
                               "{N} looked closely at {a} at a nature center. What was its body covered with?")
                              ).format(N=person.name, he=person.he, a=art(animal.name))
        return _Item("covering", question, animal.covering, wrong, (f"animal:{animal.name}", f"person:{person.name}"))

    def trait(rng, want):
        key, phrase, good, fair = rng.choice(_TRAITS)
        yes = [a for a in animals if good(a)]
        no = [a for a in animals if fair(a)]
        if not yes or len(no) < 3:
            return None
        answer, wrong = rng.choice(yes), rng.sample(no, 3)
        entities = tuple(f"animal:{a.name}" for a in (answer, *wrong))
        if rng.random() < 0.3:
            question = f"Which of these animals {phrase}?"
        else:
            person = rng.choice(people)
            question = rng.choice(("{N} is studying four animals. Which one {p}?",
                                   "{N} made cards for four animals. Which animal {p}?")
                                  ).format(N=person.name, p=phrase)
            entities += (f"person:{person.name}",)
        return _Item(f"trait_{key}", question, answer.name, tuple(a.name for a in wrong), entities)

    def material(rng, want):
        prop, value, phrase = rng.choice(_OBJECT_TESTS)
        yes = [t for t in things if t.prop(prop) is value]
        no = [t for t in things if t.prop(prop) is (not value)]
        if not yes or len(no) < 3:
            return None
        answer, wrong = rng.choice(yes), rng.sample(no, 3)
        entities = tuple(f"thing:{t.name}" for t in (answer, *wrong))
        if rng.random() < 0.3:
            question = f"Which of these objects {phrase}?"
        else:
            person = rng.choice(people)
            question = rng.choice(("{N} is testing four objects. Which one {p}?",
                                   "{N} collected four objects for a science lesson. Which object {p}?")
                                  ).format(N=person.name, p=phrase)
            entities += (f"person:{person.name}",)
        return _Item(f"object_{prop}_{str(value).lower()}", question, art(answer.name),
                     tuple(art(t.name) for t in wrong), entities)

    return [("covering", 1.0, covering), ("trait", 1.6, trait), ("material", 1.6, material)]


# ----------------------------------------------------------------------------- openbookqa: stated rules
_MELT_WRONG = ("It will freeze even harder.", "It will turn into stone.", "It will grow bigger.",
               "It will become magnetic.", "It will stay exactly the same.")
_FREEZE_WRONG = ("It will start to boil.", "It will turn into steam.", "It will get warmer.",
                 "It will turn into sand.")
_DARK_WRONG = ("It will grow faster than before.", "It will grow many new flowers.",
               "It will turn a darker green.", "It will grow taller and stronger.")
_PLACE_WRONG = ("inside a dark closet", "in a box under the bed", "in a basement with no windows",
                "inside a kitchen drawer")
_SEED_WRONG = ("The seeds will sprout in one day.", "The seeds will grow into tall plants.",
               "The seeds will turn into flowers right away.", "The seeds will grow fruit within a week.")
_RUST_WRONG = ("It will melt away.", "It will turn into wood.", "It will float up into the air.",
               "It will turn into glass.", "It will grow bigger.")
_GRAVITY_WRONG = ("float up toward the clouds", "hang still in the air", "fly sideways forever",
                  "spin in place above the window")

RULES = {
    "melt": "Heat can turn some solids into liquids.",
    "freeze": "Water turns into ice when the temperature falls below zero degrees Celsius.",
    "plants": "Green plants need sunlight to make their food.",
    "seeds": "Seeds need water to begin to grow.",
    "rust": "Iron and steel rust when they stay wet for a long time.",
    "color": "Dark colors absorb more sunlight than light colors, so dark things get hotter in the sun.",
    "friction": "Rough surfaces cause more friction than smooth ones, so things sliding on them slow down sooner.",
    "shadow": "A shadow forms on the side of an object that faces away from the light.",
    "push": "A heavier object needs a bigger push to start it moving.",
    "camouflage": "An animal whose color matches its surroundings is harder for hunters to see.",
    "cold": "Thick fur or a thick layer of fat helps animals stay warm in icy places.",
    "desert": "Desert animals can go a long time without water and can stand great heat.",
    "living": "Living things grow, need food and water, and can have young.",
    "evaporation": "Water evaporates faster when it is warm.",
    "gravity": "Gravity pulls objects down toward the ground.",
}
_WARM_PLACE_ANIMALS = ("parrot", "iguana", "chameleon", "flamingo", "gecko", "hippo", "zebra", "frog")
_WET_PLACE_ANIMALS = ("frog", "goldfish", "hippo", "salamander", "newt", "walrus", "duck", "beaver")


def _obqa_families(P) -> list[tuple[str, float, Draw]]:
    people = _persons(P.person)
    things = [K.THING_BY_NAME[n] for n in P.thing]
    animals = [K.ANIMAL_BY_NAME[n] for n in P.animal]
    animal_names = set(P.animal)

    def named(rng):
        person = rng.choice(people)
        return person, (f"person:{person.name}",)

    def melt(rng, want):
        item = rng.choice(P.meltable)
        person, ent = named(rng)
        question = (f"{RULES['melt']} {person.name} leaves {art(item)} on a sunny car seat for an hour. "
                    f"What will most likely happen to the {item}?")
        return _Item("melt", question, "It will melt.", tuple(rng.sample(_MELT_WRONG, 3)), (f"meltable:{item}", *ent))

    def freeze(rng, want):
        place = rng.choice(P.water_place)
        person, ent = named(rng)
        question = (f"{RULES['freeze']} {person.name} leaves {art(place)} outside on a night when it is ten degrees "
                    "below zero. What will most likely happen to the water by morning?")
        return _Item("freeze", question, "It will freeze into ice.", tuple(rng.sample(_FREEZE_WRONG, 3)),
                     (f"water_place:{place}", *ent))

    def plants(rng, want):
        plant = rng.choice(P.plant)
        person, ent = named(rng)
        if rng.random() < 0.5:
            question = (f"{RULES['plants']} {person.name} moves {art(plant)} from a sunny window into a dark closet "
                        f"for three weeks. What will most likely happen to the {plant}?")
            return _Item("plants_dark", question, "It will become weak and pale.", tuple(rng.sample(_DARK_WRONG, 3)),
                         (f"plant:{plant}", *ent))
        question = f"{RULES['plants']} Where should {person.name} keep {person.his} {plant} so that it grows best?"
        return _Item("plants_place", question, "on a sunny windowsill", tuple(rng.sample(_PLACE_WRONG, 3)),
                     (f"plant:{plant}", *ent))

    def seeds(rng, want):
        seed = rng.choice(P.seed)
        person, ent = named(rng)
        if rng.random() < 0.5:
            question = (f"{RULES['seeds']} {person.name} plants {seed} seeds in dry soil and never waters them. "
                        "What will most likely happen?")
            return _Item("seeds_dry", question, "The seeds will not sprout.", tuple(rng.sample(_SEED_WRONG, 3)),
                         (f"seed:{seed}", *ent))
        question = (f"{RULES['seeds']} {person.name} plants {seed} seeds in four pots. "
                    "Which pot will most likely sprout first?")
        return _Item("seeds_pots", question, "the pot that is watered every day",
                     ("the pot that is never watered", "the pot that is kept completely dry",
                      "the pot with no soil and no water"), (f"seed:{seed}", *ent))

    def rust(rng, want):
        rusty = [t for t in things if t.prop("rusts") is True]
        safe = [t for t in things if t.prop("rusts") is False]
        person, ent = named(rng)
        if rng.random() < 0.5:
            item = rng.choice(rusty)
            question = (f"{RULES['rust']} {person.name} leaves {art(item.name)} out in the rain for a month. "
                        "What will most likely happen to it?")
            return _Item("rust_outcome", question, "It will get rusty.", tuple(rng.sample(_RUST_WRONG, 3)),
                         (f"thing:{item.name}", *ent))
        answer, wrong = rng.choice(rusty), rng.sample(safe, 3)
        question = (f"{RULES['rust']} {person.name} leaves four things out in the rain for a month. "
                    "Which one will most likely rust?")
        return _Item("rust_pick", question, art(answer.name), tuple(art(t.name) for t in wrong),
                     (*(f"thing:{t.name}" for t in (answer, *wrong)), *ent))

    def color(rng, want):
        item, plural = rng.choice([c for c in K.COLOR_ITEMS if c[0] in P.color_item])
        person, ent = named(rng)
        if rng.random() < 0.5:
            answer, wrong, most = rng.choice(K.DARK_COLORS), rng.sample(K.LIGHT_COLORS, 3), "get the hottest"
        else:
            answer, wrong, most = rng.choice(K.LIGHT_COLORS), rng.sample(K.DARK_COLORS, 3), "stay the coolest"
        question = (f"{RULES['color']} {person.name} leaves four {plural} of different colors in the sun. "
                    f"Which one will {most}?")
        return _Item("color", question, f"the {answer} {item}", tuple(f"the {c} {item}" for c in wrong),
                     (f"color_item:{item}", *ent))

    def friction(rng, want):
        slider = rng.choice(P.slider)
        person, ent = named(rng)
        if rng.random() < 0.5:
            answer, wrong, how = rng.choice(K.ROUGH_SURFACES), rng.sample(K.SMOOTH_SURFACES, 3), "stop soonest"
        else:
            answer, wrong, how = rng.choice(K.SMOOTH_SURFACES), rng.sample(K.ROUGH_SURFACES, 3), "slide the farthest"
        question = (f"{RULES['friction']} {person.name} gives {art(slider)} the same push across four different "
                    f"surfaces. On which surface will it {how}?")
        return _Item("friction", question, answer, tuple(wrong), (f"slider:{slider}", *ent))

    def shadow(rng, want):
        if rng.random() < 0.6:
            thing = rng.choice(P.tall_thing)
            morning = rng.random() < 0.5
            when, sun, away, toward = (("Early in the morning", "east", "west", "east") if morning
                                       else ("Late in the afternoon", "west", "east", "west"))
            question = (f"{RULES['shadow']} {when} the Sun is in the {sun}. "
                        f"Which way will the shadow of {art(thing)} point?")
            return _Item("shadow_sun", question, f"toward the {away}",
                         (f"toward the {toward}", "toward the Sun", "straight up into the sky"),
                         (f"tall_thing:{thing}",))
        toy = rng.choice(P.toy)
        person, ent = named(rng)
        side, other = ("left", "right") if rng.random() < 0.5 else ("right", "left")
        question = (f"{RULES['shadow']} {person.name} shines a flashlight at {art(toy)} from its {side} side. "
                    "Where will the toy's shadow fall?")
        return _Item("shadow_toy", question, f"on the {other} side of the toy",
                     (f"on the {side} side of the toy", "on top of the flashlight", "inside the flashlight"),
                     (f"toy:{toy}", *ent))

    def push(rng, want):
        movable = [t for t in things if t.weight is not None and t.size is not None and t.size <= 5]
        if len(movable) < 4:
            return None
        chosen = rng.sample(movable, 4)
        biggest = rng.random() < 0.5
        chosen.sort(key=lambda t: -t.weight if biggest else t.weight)
        if abs(chosen[0].weight - chosen[1].weight) < 2:
            return None
        person, ent = named(rng)
        question = (f"{RULES['push']} {person.name} wants to slide four things across the floor. "
                    f"Which one needs the {'biggest' if biggest else 'smallest'} push?")
        return _Item("push", question, art(chosen[0].name), tuple(art(t.name) for t in chosen[1:]),
                     (*(f"thing:{t.name}" for t in chosen), *ent))

    def camouflage(rng, want):
        animal = rng.choice([a for a in K.CAMO_ANIMALS if a in animal_names])
        surface, match, clash = rng.choice(K.SURFACES)
        question = f"{RULES['camouflage']} Which {animal} would be hardest for a hungry hawk to spot on {surface}?"
        return _Item("camouflage", question, art(f"{match} {animal}"), tuple(art(f"{c} {animal}") for c in clash),
                     (f"animal:{animal}",))

    def habitat(rng, want):
        cold = rng.random() < 0.5
        key = "cold" if cold else "desert"
        yes = [a.name for a in animals if a.habitat == key]
        no_names = (_WARM_PLACE_ANIMALS + tuple(a.name for a in K.ANIMALS if a.habitat == "desert") if cold
                    else _WET_PLACE_ANIMALS + tuple(a.name for a in K.ANIMALS if a.habitat == "cold"))
        no = [n for n in dict.fromkeys(no_names) if n in animal_names and n not in yes]
        if not yes or len(no) < 3:
            return None
        answer, wrong = rng.choice(yes), rng.sample(no, 3)
        person, ent = named(rng)
        place = "a frozen land of ice and snow" if cold else "a hot, dry desert"
        question = rng.choice((f"{RULES[key]} Which animal is best suited to live in {place}?",
                               f"{RULES[key]} {person.name} is making a poster about {place}. "
                               "Which animal belongs on it?"))
        entities = tuple(f"animal:{n}" for n in (answer, *wrong)) + (ent if person.name in question else ())
        return _Item(f"habitat_{key}", question, art(answer), tuple(art(n) for n in wrong), entities)

    def living(rng, want):
        person, ent = named(rng)
        alive = rng.random() < 0.5
        yes, no = (P.living, P.nonliving) if alive else (P.nonliving, P.living)
        answer, wrong = rng.choice(yes), rng.sample(no, 3)
        kind_yes, kind_no = ("living", "nonliving") if alive else ("nonliving", "living")
        question = (f"{RULES['living']} {person.name} sorts pictures into living and nonliving things. "
                    f"Which picture shows {'a living' if alive else 'a nonliving'} thing?")
        return _Item("living", question, art(answer), tuple(art(n) for n in wrong),
                     (f"{kind_yes}:{answer}", *(f"{kind_no}:{n}" for n in wrong), *ent))

    def evaporation(rng, want):
        items = rng.choice(P.drying_item)
        person, ent = named(rng)
        question = (f"{RULES['evaporation']} {person.name} hangs two wet {items} outside, one in the hot sun and "
                    "one in cool shade. Which will most likely dry first?")
        return _Item("evaporation", question, "the one in the hot sun",
                     ("the one in the cool shade", "both at exactly the same time",
                      "neither, because wet things never dry"),
                     (f"drying_item:{items}", *ent))

    def gravity(rng, want):
        thing = rng.choice(P.dropped_thing)
        person, ent = named(rng)
        question = (f"{RULES['gravity']} {person.name} holds {art(thing)} out of a window and lets go. "
                    f"What will the {thing} do?")
        return _Item("gravity", question, "fall down to the ground", tuple(rng.sample(_GRAVITY_WRONG, 3)),
                     (f"dropped_thing:{thing}", *ent))

    return [
        ("melt", 0.6, melt), ("freeze", 0.6, freeze), ("plants", 0.8, plants), ("seeds", 0.7, seeds),
        ("rust", 0.9, rust), ("color", 1.0, color), ("friction", 0.8, friction), ("shadow", 0.8, shadow),
        ("push", 0.9, push), ("camouflage", 0.7, camouflage), ("habitat", 0.7, habitat), ("living", 0.8, living),
        ("evaporation", 0.3, evaporation), ("gravity", 0.3, gravity),
    ]


# ----------------------------------------------------------------------------- tasks
_ALL_ANIMALS = tuple(a.name for a in K.ANIMALS)
_ALL_THINGS = tuple(t.name for t in K.THINGS)
_ALL_PEOPLE = tuple(p.name for p in PEOPLE)

# Per task: the entity kinds it draws from (split train/test once) and its families.
_TASKS: dict[str, tuple[dict[str, Sequence[str]], Callable]] = {
    "boolq": ({"thing": _ALL_THINGS, "animal": _ALL_ANIMALS, "room_item": tuple(n for n, _ in K.ROOM_ITEMS)},
              _boolq_families),
    "piqa": ({"tool": tuple(t.name for t in K.TOOLS), "thing": _ALL_THINGS, "person": _ALL_PEOPLE},
             _piqa_families),
    "social_i_qa": ({"situation": tuple(s.key for s in K.SITUATIONS), "person": _ALL_PEOPLE}, _siqa_families),
    "hellaswag": ({"script": tuple(s.activity for s in K.SCRIPTS), "person": _ALL_PEOPLE}, _hellaswag_families),
    "winogrande": ({"frame": tuple(f[0] for f in K.PEOPLE_TWINS), "person": _ALL_PEOPLE, "thing": _ALL_THINGS,
                    "animal": _ALL_ANIMALS}, _wino_families),
    "ARC-Easy": ({"animal": _ALL_ANIMALS, "person": _ALL_PEOPLE, "substance": tuple(s for s, _ in K.SUBSTANCES),
                  "body_part": tuple(b[0] for b in K.BODY_PARTS), "plant_part": tuple(p[0] for p in K.PLANT_PARTS),
                  "instrument": tuple(i[0] for i in K.INSTRUMENTS), "fact": tuple(f[0] for f in K.SCIENCE_FACTS)},
                 _arc_easy_families),
    "ARC-Challenge": ({"animal": _ALL_ANIMALS, "thing": _ALL_THINGS, "person": _ALL_PEOPLE},
                      _arc_challenge_families),
    "openbookqa": ({"person": _ALL_PEOPLE, "thing": _ALL_THINGS, "animal": _ALL_ANIMALS, "meltable": K.MELTABLE,
                    "water_place": K.WATER_PLACES, "plant": K.PLANTS, "seed": K.SEEDS,
                    "color_item": tuple(c[0] for c in K.COLOR_ITEMS), "slider": K.SLIDERS,
                    "tall_thing": K.TALL_THINGS, "toy": K.SHADOW_TOYS, "living": K.LIVING_THINGS,
                    "nonliving": K.NONLIVING_THINGS, "drying_item": K.DRYING_ITEMS,
                    "dropped_thing": K.DROPPED_THINGS}, _obqa_families),
}


def generate_task(name: str, seed: int = 0) -> dict[str, list[SyntheticExample]]:
    """Both splits of one task, with metadata."""
    kinds, make_families = _TASKS[name]
    pools = _pools(name, seed, kinds)
    out: dict[str, list[SyntheticExample]] = {}
    banned: set[str] = set()
    for split in SPLITS:  # train first: test questions must not repeat a train question
        rng = random.Random(f"omoe_lab.synthetic/{seed}/{name}/{split}")
        items = _collect(name, make_families(pools[split]), SPLIT_SIZES[split], rng, banned)
        banned |= {item.question for item in items}
        out[split] = [
            SyntheticExample(name, split, item.family, item.question, options, label, item.entities,
                             render_record(name, item.question, options, label))
            for item, options, label in _place(name, items, rng)
        ]
    return out


def generate_suite(seed: int = 0, with_meta: bool = False, tasks: Sequence[str] = TASK_NAMES) -> dict[str, Any]:
    """``{task: {split: [record, ...]}}``; with ``with_meta`` the lists hold ``SyntheticExample``s."""
    suite = {}
    for name in tasks:
        if name not in _TASKS:
            raise ValueError(f"unknown synthetic task {name!r}; known: {', '.join(TASK_NAMES)}")
        splits = generate_task(name, seed)
        suite[name] = splits if with_meta else {s: [ex.record for ex in exs] for s, exs in splits.items()}
    return suite


# ----------------------------------------------------------------------------- files
def serialize(records: list[dict[str, str]]) -> str:
    return json.dumps(records, indent=1, ensure_ascii=False) + "\n"


def write_suite(out: str | os.PathLike = DEFAULT_OUT, seed: int = 0) -> list[Path]:
    """Write ``<out>/<task>/{train,test}.json`` for every task; returns the paths written."""
    out = Path(out)
    written = []
    for name, splits in generate_suite(seed).items():
        for split, records in splits.items():
            path = out / name / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, serialize(records))
            written.append(path)
    return written


def check_suite(out: str | os.PathLike = DEFAULT_OUT, seed: int = 0) -> list[str]:
    """Differences between the files under ``out`` and a fresh generation (empty when identical)."""
    out = Path(out)
    problems = []
    for name, splits in generate_suite(seed).items():
        for split, records in splits.items():
            path = out / name / f"{split}.json"
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            text = path.read_text(encoding="utf-8")
            if text == serialize(records):
                continue
            try:
                committed = json.loads(text)
            except json.JSONDecodeError as err:
                problems.append(f"{path}: not valid JSON ({err})")
                continue
            if committed == records:
                problems.append(f"{path}: same records, different formatting")
                continue
            first = next((i for i, (a, b) in enumerate(zip(committed, records)) if a != b),
                         min(len(committed), len(records)))
            problems.append(f"{path}: {len(committed)} records on disk, {len(records)} generated; "
                            f"first difference at record {first}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omoe_lab.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder to write (default: the repository's data/)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (the committed suite uses 0)")
    parser.add_argument("--check", action="store_true", help="verify the files instead of writing them")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_suite(args.out, args.seed)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"{len(problems)} file(s) differ; regenerate with: "
                  f"python -m omoe_lab.data.synthetic --out {args.out}", file=sys.stderr)
            return 1
        print(f"{args.out}: all {len(TASK_NAMES) * len(SPLITS)} files match the generator")
        return 0
    for path in write_suite(args.out, args.seed):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
