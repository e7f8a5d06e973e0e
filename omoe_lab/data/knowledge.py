"""Hand-written knowledge tables behind the built-in synthetic suite (``omoe_lab.data.synthetic``).

Every fact the suite asks about is stated here, so the correct answer of every generated example
follows from these tables alone. A property that depends on the particular object (a glass bottle
may float or sink, a dog may be tiny or huge) is ``None`` and is never asked about.

The tables are plain tuples and lists: the generator walks them in the order written, which keeps
the suite identical across Python versions and hash seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- people
FEMALE_NAMES = (
    "Emma", "Olivia", "Ava", "Mia", "Sophia", "Lily", "Grace", "Chloe", "Zoe", "Ella", "Hannah", "Nora",
    "Alice", "Clara", "Julia", "Lucy", "Maya", "Sara", "Anna", "Leah", "Amy", "Rosa", "Nina", "Eva",
    "Kate", "Laura", "Megan", "Naomi", "Paula", "Rachel", "Tara", "Wendy", "Fiona", "Helen", "Irene",
    "Diana", "Emily", "Molly", "Priya", "Aisha", "Mei", "Sofia", "Yuki", "Lena", "Greta", "Rita",
    "Bella", "Carmen", "Dana", "Elsa",
)
MALE_NAMES = (
    "Liam", "Noah", "Oliver", "Lucas", "Ethan", "Mason", "Leo", "Jack", "Owen", "Ben", "Sam", "Max",
    "Tom", "Adam", "Daniel", "David", "Henry", "Isaac", "James", "Kevin", "Luke", "Martin", "Nathan",
    "Oscar", "Paul", "Ryan", "Simon", "Victor", "Felix", "George", "Hugo", "Ivan", "Jonah", "Kai",
    "Omar", "Raj", "Chen", "Diego", "Marco", "Tariq", "Peter", "Carl", "Eric", "Frank", "Gavin",
    "Hank", "Joel", "Kyle", "Neil", "Theo",
)


@dataclass(frozen=True)
class Person:
    name: str
    he: str
    him: str
    his: str


PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "him", "his")}


def people() -> list[Person]:
    """Every name with its pronouns, female and male names interleaved."""
    out = []
    for female, male in zip(FEMALE_NAMES, MALE_NAMES):
        out.append(Person(female, *PRONOUNS["f"]))
        out.append(Person(male, *PRONOUNS["m"]))
    return out


# ----------------------------------------------------------------------------- animals
@dataclass(frozen=True)
class Animal:
    """One animal. ``size``: 1 insect-sized ... 6 elephant-sized; compared only when 2+ apart."""

    name: str
    group: str  # mammal, bird, reptile, amphibian, fish, insect, arachnid, invertebrate
    legs: int | None
    flies: bool | None
    in_water: bool | None  # lives in water all the time
    diet: str | None  # herbivore, carnivore, omnivore
    size: int | None
    sounds: tuple[str, ...]  # base verbs; the first is its usual sound
    habitat: str | None  # cold, desert, or None when not used
    covering_ok: bool  # its body covering is the usual one of its group
    lays_eggs: bool | None

    @property
    def backbone(self) -> bool:
        return self.group in VERTEBRATE_GROUPS

    @property
    def warm_blooded(self) -> bool | None:
        if self.group in ("mammal", "bird"):
            return True
        if self.group in ("reptile", "amphibian", "fish"):
            return False
        return None  # insects and other invertebrates are left out of the question

    @property
    def covering(self) -> str | None:
        return GROUP_COVERING.get(self.group) if self.covering_ok else None


VERTEBRATE_GROUPS = ("mammal", "bird", "reptile", "amphibian", "fish")
CLASS_GROUPS = ("mammal", "bird", "reptile", "amphibian", "fish", "insect", "arachnid")
GROUP_PLURAL = {"mammal": "mammals", "bird": "birds", "reptile": "reptiles", "amphibian": "amphibians",
                "fish": "fish", "insect": "insects", "arachnid": "arachnids"}
GROUP_COVERING = {"mammal": "fur", "bird": "feathers", "reptile": "scales", "fish": "scales",
                  "amphibian": "smooth, moist skin", "insect": "a hard outer skeleton",
                  "arachnid": "a hard outer skeleton"}
COVERINGS = ("fur", "feathers", "scales", "smooth, moist skin", "a hard outer skeleton")
_EGGS_BY_GROUP = {"mammal": False, "bird": True, "reptile": True, "amphibian": True, "fish": True,
                  "insect": True, "arachnid": True, "invertebrate": None}

T, F, N = True, False, None
# name, group, legs, flies, in_water, diet, size, sounds, habitat, flags
# flags: "nocover" (covering unlike its group), "noeggs?" (egg laying varies, not asked)
_ANIMAL_ROWS = (
    ("dog", "mammal", 4, F, F, N, N, ("bark", "howl", "growl", "whine"), N, ""),
    ("cat", "mammal", 4, F, F, "carnivore", 3, ("meow", "purr", "hiss", "growl"), N, ""),
    ("cow", "mammal", 4, F, F, "herbivore", 5, ("moo",), N, ""),
    ("horse", "mammal", 4, F, F, "herbivore", 5, ("neigh",), N, ""),
    ("sheep", "mammal", 4, F, F, "herbivore", 4, ("baa", "bleat"), N, ""),
    ("goat", "mammal", 4, F, F, "herbivore", 4, ("bleat", "baa"), N, ""),
    ("pig", "mammal", 4, F, F, "omnivore", 4, ("oink", "grunt", "squeal"), N, "nocover"),
    ("rabbit", "mammal", 4, F, F, "herbivore", 3, (), N, ""),
    ("mouse", "mammal", 4, F, F, "omnivore", 2, ("squeak",), N, ""),
    ("deer", "mammal", 4, F, F, "herbivore", 5, (), N, ""),
    ("lion", "mammal", 4, F, F, "carnivore", 5, ("roar", "growl"), N, ""),
    ("tiger", "mammal", 4, F, F, "carnivore", 5, ("roar", "growl"), N, ""),
    ("bear", "mammal", 4, F, F, "omnivore", 5, ("growl", "roar"), N, ""),
    ("wolf", "mammal", 4, F, F, "carnivore", 4, ("howl", "growl", "bark"), N, ""),
    ("fox", "mammal", 4, F, F, "omnivore", 3, (), N, ""),
    ("elephant", "mammal", 4, F, F, "herbivore", 6, (), N, "nocover"),
    ("giraffe", "mammal", 4, F, F, "herbivore", 6, (), N, ""),
    ("zebra", "mammal", 4, F, F, "herbivore", 5, (), N, ""),
    ("camel", "mammal", 4, F, F, "herbivore", 5, (), "desert", ""),
    ("monkey", "mammal", N, F, F, N, 3, (), N, ""),
    ("squirrel", "mammal", 4, F, F, N, 2, (), N, ""),
    ("whale", "mammal", 0, F, T, N, 6, (), N, "nocover"),
    ("dolphin", "mammal", 0, F, T, "carnivore", N, (), N, "nocover"),
    ("bat", "mammal", N, T, F, N, 2, (), N, ""),
    ("hippo", "mammal", 4, F, N, "herbivore", 6, (), N, "nocover"),
    ("kangaroo", "mammal", N, F, F, "herbivore", 5, (), N, ""),
    ("polar bear", "mammal", 4, F, N, "carnivore", 5, (), "cold", ""),
    ("hamster", "mammal", 4, F, F, N, 2, (), N, ""),
    ("raccoon", "mammal", 4, F, F, "omnivore", 3, (), N, ""),
    ("beaver", "mammal", 4, F, N, "herbivore", 3, (), N, ""),
    ("moose", "mammal", 4, F, F, "herbivore", 5, (), N, ""),
    ("gorilla", "mammal", N, F, F, "herbivore", 5, (), N, ""),
    ("donkey", "mammal", 4, F, F, "herbivore", 5, ("bray",), N, ""),
    ("arctic fox", "mammal", 4, F, F, N, 3, (), "cold", ""),
    ("musk ox", "mammal", 4, F, F, "herbivore", 5, (), "cold", ""),
    ("walrus", "mammal", N, F, N, "carnivore", 5, (), "cold", "nocover"),
    ("reindeer", "mammal", 4, F, F, "herbivore", 5, (), "cold", ""),
    ("eagle", "bird", 2, T, F, "carnivore", 3, (), N, ""),
    ("owl", "bird", 2, T, F, "carnivore", 3, ("hoot", "screech"), N, ""),
    ("sparrow", "bird", 2, T, F, N, 2, ("chirp",), N, ""),
    ("robin", "bird", 2, T, F, N, 2, ("chirp", "sing"), N, ""),
    ("parrot", "bird", 2, T, F, N, 3, (), N, ""),
    ("duck", "bird", 2, T, N, N, 3, ("quack",), N, ""),
    ("chicken", "bird", 2, N, F, "omnivore", 3, ("cluck",), N, ""),
    ("penguin", "bird", 2, F, N, "carnivore", N, (), "cold", ""),
    ("ostrich", "bird", 2, F, F, N, 5, (), N, ""),
    ("hawk", "bird", 2, T, F, "carnivore", 3, ("screech",), N, ""),
    ("pigeon", "bird", 2, T, F, N, 2, ("coo",), N, ""),
    ("crow", "bird", 2, T, F, "omnivore", 2, ("caw",), N, ""),
    ("goose", "bird", 2, T, N, "herbivore", 4, ("honk", "hiss"), N, ""),
    ("woodpecker", "bird", 2, T, F, N, 2, (), N, ""),
    ("hummingbird", "bird", 2, T, F, N, 1, ("hum",), N, ""),
    ("flamingo", "bird", 2, T, F, N, 4, (), N, ""),
    ("swan", "bird", 2, T, N, N, 4, ("hiss",), N, ""),
    ("snowy owl", "bird", 2, T, F, "carnivore", 3, (), "cold", ""),
    ("roadrunner", "bird", 2, N, F, N, 3, (), "desert", ""),
    ("snake", "reptile", 0, F, N, "carnivore", N, ("hiss",), N, "noeggs?"),
    ("lizard", "reptile", 4, F, F, N, 2, (), N, ""),
    ("turtle", "reptile", 4, F, N, N, N, (), N, "nocover"),
    ("tortoise", "reptile", 4, F, F, "herbivore", N, (), N, "nocover"),
    ("crocodile", "reptile", 4, F, N, "carnivore", 5, ("hiss", "growl"), N, ""),
    ("alligator", "reptile", 4, F, N, "carnivore", 5, ("hiss", "growl"), N, ""),
    ("iguana", "reptile", 4, F, F, "herbivore", 3, (), N, ""),
    ("gecko", "reptile", 4, F, F, "carnivore", 2, (), N, ""),
    ("chameleon", "reptile", 4, F, F, "carnivore", 2, (), N, ""),
    ("rattlesnake", "reptile", 0, F, F, "carnivore", N, ("hiss", "rattle", "buzz"), "desert", "noeggs?"),
    ("frog", "amphibian", 4, F, N, "carnivore", 2, ("croak",), N, ""),
    ("toad", "amphibian", 4, F, F, "carnivore", 2, ("croak",), N, ""),
    ("salamander", "amphibian", 4, F, N, "carnivore", 2, (), N, ""),
    ("newt", "amphibian", 4, F, N, "carnivore", 2, (), N, ""),
    ("goldfish", "fish", 0, F, T, N, 2, (), N, ""),
    ("shark", "fish", 0, F, T, "carnivore", N, (), N, "nocover noeggs?"),
    ("salmon", "fish", 0, F, T, "carnivore", 3, (), N, ""),
    ("tuna", "fish", 0, F, T, "carnivore", 4, (), N, ""),
    ("trout", "fish", 0, F, T, "carnivore", 3, (), N, ""),
    ("cod", "fish", 0, F, T, "carnivore", 3, (), N, ""),
    ("clownfish", "fish", 0, F, T, N, 2, (), N, ""),
    ("catfish", "fish", 0, F, T, N, N, (), N, "nocover"),
    ("ant", "insect", 6, N, F, N, 1, (), N, ""),
    ("bee", "insect", 6, T, F, N, 1, ("buzz",), N, ""),
    ("butterfly", "insect", 6, T, F, N, 1, (), N, ""),
    ("mosquito", "insect", 6, T, F, N, 1, ("buzz",), N, ""),
    ("ladybug", "insect", 6, T, F, N, 1, (), N, ""),
    ("grasshopper", "insect", 6, N, F, "herbivore", 1, ("chirp", "buzz"), N, ""),
    ("beetle", "insect", 6, N, F, N, 1, (), N, ""),
    ("dragonfly", "insect", 6, T, F, "carnivore", 1, (), N, ""),
    ("moth", "insect", 6, T, F, N, 1, (), N, ""),
    ("cricket", "insect", 6, N, F, N, 1, ("chirp", "buzz"), N, ""),
    ("housefly", "insect", 6, T, F, N, 1, ("buzz",), N, ""),
    ("wasp", "insect", 6, T, F, N, 1, ("buzz",), N, ""),
    ("spider", "arachnid", 8, F, F, "carnivore", 1, (), N, ""),
    ("scorpion", "arachnid", 8, F, F, "carnivore", 1, (), "desert", "noeggs?"),
    ("tick", "arachnid", 8, F, F, N, 1, (), N, ""),
    ("snail", "invertebrate", 0, F, N, N, 1, (), N, "nocover"),
    ("earthworm", "invertebrate", 0, F, F, N, 1, (), N, "nocover"),
    ("jellyfish", "invertebrate", 0, F, T, N, N, (), N, "nocover"),
    ("octopus", "invertebrate", N, F, T, "carnivore", N, (), N, "nocover"),
    ("starfish", "invertebrate", N, F, T, N, N, (), N, "nocover"),
    ("crab", "invertebrate", N, F, N, N, N, (), N, "nocover"),
    ("slug", "invertebrate", 0, F, F, N, 1, (), N, "nocover"),
)


def _animal(row) -> Animal:
    name, group, legs, flies, in_water, diet, size, sounds, habitat, flags = row
    eggs = None if "noeggs?" in flags else _EGGS_BY_GROUP[group]
    return Animal(name, group, legs, flies, in_water, diet, size, sounds, habitat, "nocover" not in flags, eggs)


ANIMALS: tuple[Animal, ...] = tuple(_animal(row) for row in _ANIMAL_ROWS)
ANIMAL_BY_NAME = {a.name: a for a in ANIMALS}
# Distinct calls used for "does a X <sound>?" questions that should be false.
FALSE_SOUNDS = ("moo", "neigh", "oink", "quack", "cluck", "honk", "croak", "buzz", "meow", "bark", "hoot", "baa")

# Who eats whom (predator, prey): used for "the _ was hungry / afraid" sentences.
PREDATOR_PREY = (
    ("cat", "mouse"), ("owl", "mouse"), ("hawk", "mouse"), ("snake", "mouse"), ("fox", "rabbit"),
    ("hawk", "rabbit"), ("eagle", "rabbit"), ("wolf", "rabbit"), ("wolf", "sheep"), ("wolf", "deer"),
    ("lion", "zebra"), ("tiger", "deer"), ("bear", "salmon"), ("snake", "frog"), ("frog", "housefly"),
    ("spider", "housefly"), ("shark", "tuna"), ("crocodile", "zebra"), ("polar bear", "walrus"),
    ("lizard", "cricket"), ("chameleon", "grasshopper"), ("robin", "earthworm"), ("fox", "chicken"),
    ("cat", "sparrow"), ("dragonfly", "mosquito"), ("gecko", "moth"), ("alligator", "turtle"),
    ("eagle", "trout"), ("owl", "hamster"), ("snake", "lizard"), ("arctic fox", "snowy owl"),
    ("dolphin", "cod"), ("toad", "beetle"), ("spider", "mosquito"), ("wasp", "ladybug"),
)

# Young animals (ARC-Easy one-hop facts).
YOUNG = (("cow", "calf"), ("dog", "puppy"), ("cat", "kitten"), ("horse", "foal"), ("sheep", "lamb"),
         ("frog", "tadpole"), ("goose", "gosling"), ("duck", "duckling"), ("bear", "cub"), ("lion", "cub"),
         ("kangaroo", "joey"), ("goat", "kid"), ("deer", "fawn"), ("pig", "piglet"), ("chicken", "chick"),
         ("owl", "owlet"), ("swan", "cygnet"), ("butterfly", "caterpillar"))
YOUNG_WORDS = ("calf", "puppy", "kitten", "foal", "lamb", "tadpole", "gosling", "duckling", "cub", "joey",
               "kid", "fawn", "piglet", "chick", "owlet", "cygnet", "caterpillar")


# ----------------------------------------------------------------------------- materials and objects
@dataclass(frozen=True)
class Material:
    name: str
    floats: bool | None
    magnetic: bool | None
    conducts: bool | None  # electricity
    fragile: bool | None  # shatters when dropped on a hard floor
    melts: bool | None  # melts on a hot summer day
    absorbs: bool | None  # soaks up water
    transparent: bool | None
    rusts: bool | None
    burns: bool | None


MATERIALS = {m.name: m for m in (
    #         name        floats magnet conduct fragile melts absorbs clear rusts burns
    Material("wood",      T, F, F, F, F, N, F, F, T),
    Material("iron",      F, T, T, F, F, F, F, T, F),
    Material("steel",     F, T, T, F, F, F, F, T, F),
    Material("copper",    F, F, T, F, F, F, F, F, F),
    Material("aluminum",  F, F, T, F, F, F, F, F, F),
    Material("gold",      F, F, T, F, F, F, F, F, F),
    Material("silver",    F, F, T, F, F, F, F, F, F),
    Material("glass",     F, F, F, T, F, F, T, F, F),
    Material("ceramic",   F, F, F, T, F, F, F, F, F),
    Material("rubber",    N, F, F, F, F, F, F, F, N),
    Material("plastic",   N, F, F, N, F, F, N, F, N),
    Material("paper",     N, F, F, F, F, T, F, F, T),
    Material("cloth",     N, F, F, F, F, T, F, F, T),
    Material("wool",      N, F, F, F, F, T, F, F, N),
    Material("stone",     F, F, F, N, F, F, F, F, F),
    Material("wax",       T, F, F, F, N, F, F, F, N),
    Material("ice",       T, F, N, N, T, F, N, F, F),
    Material("chocolate", N, F, F, F, T, F, F, F, N),
    Material("butter",    N, F, F, F, T, F, F, F, N),
    Material("cork",      T, F, F, F, F, N, F, F, N),
    Material("sponge",    T, F, F, F, F, T, F, F, N),
    Material("feather",   T, F, F, F, F, N, F, F, N),
    Material("foam",      T, F, F, F, F, N, F, F, N),
    Material("mixed",     N, N, N, N, N, N, N, N, N),
)}
PROPERTIES = ("floats", "magnetic", "conducts", "fragile", "melts", "absorbs", "transparent", "rusts", "burns")


@dataclass(frozen=True)
class Thing:
    """An everyday object. ``size`` and ``weight`` run 1 (a pin) ... 6 (a car); None: not compared.
    ``made_of`` is the word used in "is X usually made of ...?" (None: not asked, e.g. when the
    name already says it). ``holds``: the largest size class that fits inside it (containers)."""

    name: str
    material: str
    size: int | None
    weight: int | None
    made_of: str | None = None
    holds: int | None = None
    overrides: tuple[tuple[str, bool | None], ...] = ()

    def prop(self, name: str) -> bool | None:
        for key, value in self.overrides:
            if key == name:
                return value
        return getattr(MATERIALS[self.material], name)


def _thing(name, material, size, weight, made_of=None, holds=None, **overrides) -> Thing:
    return Thing(name, material, size, weight, made_of, holds, tuple(sorted(overrides.items())))


# Words for "made of" questions; a false one is picked from those far from the true one.
MADE_OF_WORDS = ("wood", "metal", "glass", "paper", "cloth", "rubber", "stone", "wax", "clay", "cardboard")

THINGS: tuple[Thing, ...] = (
    _thing("wooden spoon", "wood", 2, 2),
    _thing("wooden chair", "wood", 4, 4),
    _thing("wooden table", "wood", 5, 5),
    _thing("pencil", "wood", 2, 1, "wood", conducts=N),
    _thing("log", "wood", 4, 4, "wood"),
    _thing("wooden block", "wood", 2, 2),
    _thing("toothpick", "wood", 1, 1, "wood"),
    _thing("popsicle stick", "wood", 1, 1, "wood"),
    _thing("wooden baseball bat", "wood", 3, 3),
    _thing("wooden ruler", "wood", 2, 1),
    _thing("wooden door", "wood", 5, 5),
    _thing("iron nail", "iron", 1, 1),
    _thing("paper clip", "steel", 1, 1, "metal"),
    _thing("sewing needle", "steel", 1, 1, "metal"),
    _thing("safety pin", "steel", 1, 1, "metal"),
    _thing("steel screw", "steel", 1, 1),
    _thing("steel bolt", "steel", 1, 1),
    _thing("horseshoe", "iron", 2, 2, "metal"),
    _thing("iron chain", "iron", 3, 3),
    _thing("iron gate", "iron", 5, 5),
    _thing("cast-iron pan", "iron", 3, 3),
    _thing("anvil", "iron", 3, 6, "metal"),
    _thing("copper wire", "copper", 2, 1),
    _thing("copper pot", "copper", 3, 3, floats=N),
    _thing("copper pipe", "copper", 3, 3),
    _thing("aluminum can", "aluminum", 2, 1, floats=N),
    _thing("sheet of aluminum foil", "aluminum", 2, 1, floats=N),
    _thing("aluminum ladder", "aluminum", 5, 4, floats=N),
    _thing("gold ring", "gold", 1, 1),
    _thing("gold coin", "gold", 1, 1),
    _thing("silver spoon", "silver", 2, 2),
    _thing("silver bracelet", "silver", 1, 1),
    _thing("glass marble", "glass", 1, 1, transparent=N),
    _thing("window pane", "glass", 5, 4, "glass"),
    _thing("drinking glass", "glass", 2, 2, floats=N, holds=1),
    _thing("glass jar", "glass", 2, 2, floats=N, holds=1),
    _thing("mirror", "glass", 3, 3, "glass", transparent=F),
    _thing("light bulb", "glass", 2, 1, "glass", floats=N, conducts=N, transparent=N),
    _thing("glass bottle", "glass", 2, 2, floats=N),
    _thing("glass vase", "glass", 3, 2, floats=N),
    _thing("ceramic mug", "ceramic", 2, 2, floats=N, holds=1),
    _thing("china plate", "ceramic", 3, 2),
    _thing("clay flower pot", "ceramic", 3, 3, floats=N, absorbs=N),
    _thing("porcelain teacup", "ceramic", 2, 1, floats=N),
    _thing("ceramic bowl", "ceramic", 2, 2, floats=N),
    _thing("ceramic tile", "ceramic", 2, 2),
    _thing("rubber band", "rubber", 1, 1),
    _thing("rubber ball", "rubber", 2, 2),
    _thing("rubber boot", "rubber", 3, 2),
    _thing("rubber duck", "rubber", 2, 1, floats=T),
    _thing("bicycle tire", "rubber", 4, 2),
    _thing("plastic cup", "plastic", 2, 1, holds=1),
    _thing("plastic bottle", "plastic", 2, 1),
    _thing("plastic comb", "plastic", 2, 1),
    _thing("plastic straw", "plastic", 1, 1),
    _thing("plastic bucket", "plastic", 4, 2, holds=3),
    _thing("sheet of paper", "paper", 2, 1),
    _thing("paper bag", "paper", 3, 1),
    _thing("newspaper", "paper", 3, 1, "paper"),
    _thing("cardboard box", "paper", 4, 2, holds=3),
    _thing("paper towel", "paper", 2, 1),
    _thing("envelope", "paper", 2, 1, "paper"),
    _thing("paper napkin", "paper", 2, 1),
    _thing("book", "paper", 3, 3, "paper", absorbs=N),
    _thing("cotton towel", "cloth", 3, 2),
    _thing("cotton sock", "cloth", 2, 1),
    _thing("cotton T-shirt", "cloth", 3, 1),
    _thing("wool sweater", "wool", 3, 2),
    _thing("wool scarf", "wool", 3, 1),
    _thing("wool mitten", "wool", 2, 1),
    _thing("blanket", "cloth", 4, 2, "cloth"),
    _thing("pillow", "cloth", 4, 2),
    _thing("rock", "stone", N, N, "stone"),
    _thing("pebble", "stone", 1, 1, "stone"),
    _thing("brick", "stone", 3, 3, "clay", absorbs=N),
    _thing("boulder", "stone", 6, 6, "stone"),
    _thing("stone statue", "stone", 5, 6),
    _thing("stone bench", "stone", 5, 6),
    _thing("wax candle", "wax", 2, 2),
    _thing("crayon", "wax", 1, 1, "wax"),
    _thing("ice cube", "ice", 1, 1),
    _thing("icicle", "ice", 2, 1),
    _thing("snowball", "ice", 2, 1, floats=N),
    _thing("chocolate bar", "chocolate", 2, 1),
    _thing("stick of butter", "butter", 2, 1),
    _thing("scoop of ice cream", "ice", 1, 1, floats=N),
    _thing("wine cork", "cork", 1, 1),
    _thing("kitchen sponge", "sponge", 2, 1),
    _thing("feather", "feather", 2, 1),
    _thing("foam ball", "foam", 2, 1),
    _thing("car", "mixed", 6, 6, floats=F),
    _thing("piano", "mixed", 5, 6),
    _thing("refrigerator", "mixed", 5, 6),
    _thing("bicycle", "mixed", 5, 4),
    _thing("bed", "mixed", 5, 5),
    _thing("sofa", "mixed", 5, 5),
    _thing("washing machine", "mixed", 5, 6),
    _thing("suitcase", "mixed", 4, 3, holds=3),
    _thing("backpack", "cloth", 4, 2, holds=3, floats=N, absorbs=N, burns=N),
    _thing("shoebox", "paper", 3, 1, holds=2),
    _thing("lunch box", "mixed", 3, 2, holds=2),
    _thing("shoe", "mixed", 3, 2),
    _thing("guitar", "mixed", 4, 3),
    _thing("television", "mixed", 4, 4),
    _thing("microwave", "mixed", 4, 4),
    _thing("watermelon", "mixed", 3, 4, floats=T),
    _thing("apple", "mixed", 2, 2, floats=T),
    _thing("egg", "mixed", 1, 1, floats=F, fragile=T),
    _thing("tennis ball", "mixed", 2, 1, floats=T),
    _thing("basketball", "mixed", 3, 2, floats=T),
)
THING_BY_NAME = {t.name: t for t in THINGS}

# Things usually kept in one room; "never" lists rooms where they clearly do not belong.
ROOMS = ("kitchen", "bathroom", "bedroom", "garage", "classroom")
ROOM_ITEMS = (
    ("toaster", "kitchen"), ("stove", "kitchen"), ("dishwasher", "kitchen"), ("oven", "kitchen"),
    ("spice rack", "kitchen"), ("bread box", "kitchen"), ("bathtub", "bathroom"), ("toilet", "bathroom"),
    ("shower curtain", "bathroom"), ("bath mat", "bathroom"), ("medicine cabinet", "bathroom"),
    ("bunk bed", "bedroom"), ("wardrobe", "bedroom"), ("nightstand", "bedroom"), ("dresser", "bedroom"),
    ("lawn mower", "garage"), ("workbench", "garage"), ("car jack", "garage"), ("snow shovel", "garage"),
    ("chalkboard", "classroom"), ("teacher's desk", "classroom"), ("whiteboard", "classroom"),
    ("attendance chart", "classroom"),
)
ROOM_NEVER = {
    "kitchen": ("bathroom", "bedroom", "classroom"),
    "bathroom": ("kitchen", "bedroom", "garage", "classroom"),
    "bedroom": ("kitchen", "bathroom", "garage", "classroom"),
    "garage": ("kitchen", "bathroom", "bedroom"),
    "classroom": ("kitchen", "bathroom", "bedroom", "garage"),
}


# ----------------------------------------------------------------------------- tools (piqa)
@dataclass(frozen=True)
class Tool:
    """A tool, the jobs it can do (``tags``) and goals it solves: (goal, method with {tool})."""

    name: str
    area: str
    tags: tuple[str, ...]
    goals: tuple[tuple[str, str], ...]


TOOLS: tuple[Tool, ...] = (
    Tool("hammer", "workshop", ("pound",), (
        ("drive a nail into a wooden board", "Hold the nail straight and tap it in with {tool}."),
        ("hang a picture frame on a wall", "Tap a small nail into the wall with {tool} and hang the frame on it."),
    )),
    Tool("screwdriver", "workshop", ("screw",), (
        ("tighten a loose screw on a cabinet door", "Turn the screw to the right with {tool} until it is snug."),
        ("take the battery cover off a toy", "Undo the tiny screws on the cover with {tool}."),
    )),
    Tool("wrench", "workshop", ("bolt", "pound"), (
        ("tighten a loose nut on a bicycle wheel", "Grip the nut with {tool} and turn it until it is tight."),
        ("loosen a stuck bolt under the sink", "Fit {tool} around the bolt and pull hard to turn it."),
    )),
    Tool("saw", "workshop", ("cut",), (
        ("cut a long wooden board into two shorter pieces", "Mark a line and cut along it with {tool}."),
        ("trim a thick branch off a tree", "Cut through the branch close to the trunk with {tool}."),
    )),
    Tool("drill", "workshop", ("hole",), (
        ("make a hole in a wooden board for a screw", "Press {tool} against the board and bore a small hole."),
        ("make a hole in a wall for a shelf bracket", "Bore a hole at the pencil mark with {tool}."),
    )),
    Tool("pair of pliers", "workshop", ("grip", "pound", "pinch"), (
        ("bend the end of a stiff wire into a hook", "Grip the end of the wire with {tool} and twist it around."),
        ("hold a tiny nut still while tightening it", "Clamp the nut in {tool} so it cannot spin."),
    )),
    Tool("tape measure", "workshop", ("measure",), (
        ("find out how wide a room is", "Stretch {tool} from one wall to the other and read the number."),
        ("check if a sofa will fit through a doorway", "Measure the doorway and the sofa with {tool} and compare."),
    )),
    Tool("sheet of sandpaper", "workshop", ("smooth",), (
        ("smooth the rough edge of a wooden shelf", "Rub the edge back and forth with {tool}."),
        ("take the splinters off an old wooden bench", "Rub the splintery spots with {tool} until they feel smooth."),
    )),
    Tool("paintbrush", "workshop", ("paint", "dust"), (
        ("paint a wooden fence", "Dip {tool} in the paint and spread it along the boards."),
        ("paint a thin stripe on a birdhouse", "Dip the tip of {tool} in the paint and draw the stripe slowly."),
    )),
    Tool("ladder", "workshop", ("reach",), (
        ("get a box down from the top of a tall cupboard", "Climb up {tool} and lift the box down."),
        ("clean the leaves out of a roof gutter", "Set {tool} against the house, climb up and scoop out the leaves."),
    )),
    Tool("flashlight", "workshop", ("illuminate",), (
        ("look for a lost earring under the bed", "Shine {tool} under the bed to light up the floor."),
        ("find the path back to the tent at night", "Light the path in front of you with {tool}."),
    )),
    Tool("shovel", "garden", ("dig", "scoop"), (
        ("dig a hole to plant a young tree", "Push {tool} into the soil and lift out the dirt."),
        ("move a pile of sand into a sandbox", "Scoop the sand into the sandbox with {tool}."),
    )),
    Tool("rake", "garden", ("gather", "sweep"), (
        ("gather fallen leaves into a pile", "Pull the leaves together with {tool}."),
        ("spread mulch evenly over a flower bed", "Drag {tool} across the mulch until it lies flat."),
    )),
    Tool("watering can", "garden", ("water", "carry water"), (
        ("water the flowers in a window box", "Fill {tool} with water and pour it gently over the soil."),
        ("give water to young seedlings without washing them away", "Sprinkle water over them from {tool}."),
    )),
    Tool("wheelbarrow", "garden", ("haul",), (
        ("move a heavy pile of dirt across the yard", "Load the dirt into {tool} and push it across the yard."),
        ("carry ten bags of soil to the back garden", "Stack the bags in {tool} and wheel them to the garden."),
    )),
    Tool("pair of pruning shears", "garden", ("cut",), (
        ("trim dead flowers off a rose bush", "Snip the dead flowers off with {tool}."),
        ("cut a few stems of mint for tea", "Snip the stems near the soil with {tool}."),
    )),
    Tool("broom", "cleaning", ("sweep",), (
        ("sweep crumbs off the kitchen floor", "Brush the crumbs into a pile with {tool}."),
        ("clear dry leaves off the front porch", "Sweep the leaves off the edge of the porch with {tool}."),
    )),
    Tool("mop", "cleaning", ("mop",), (
        ("clean muddy footprints off a tile floor", "Wet {tool}, wring it out and wipe the floor."),
        ("wash the floor of a school hallway", "Dip {tool} in soapy water and push it along the floor."),
    )),
    Tool("scrub brush", "cleaning", ("scrub", "mop"), (
        ("scrub burnt food off a baking pan", "Add soap and scrub the pan hard with {tool}."),
        ("clean dirt out of the grooves of a tile floor", "Scrub along the grooves with {tool} and soapy water."),
    )),
    Tool("vacuum cleaner", "cleaning", ("vacuum",), (
        ("clean cat hair off a carpet", "Run {tool} back and forth over the carpet."),
        ("suck up the dust under a sofa", "Push the hose of {tool} under the sofa."),
    )),
    Tool("dustpan", "cleaning", ("collect",), (
        ("collect a swept pile of dirt", "Sweep the pile into {tool} and empty it into the trash."),
        ("pick up broken bits of a plate from the floor", "Sweep the bits into {tool} and tip them into the bin."),
    )),
    Tool("feather duster", "cleaning", ("dust",), (
        ("remove dust from the top of a bookshelf", "Brush the dust off the shelf with {tool}."),
        ("dust the leaves of a large fake plant", "Gently brush each leaf with {tool}."),
    )),
    Tool("plunger", "cleaning", ("unclog",), (
        ("unclog a blocked toilet", "Press {tool} over the drain and pump it up and down."),
        ("clear a sink that will not drain", "Seal {tool} over the drain hole and push and pull it."),
    )),
    Tool("funnel", "kitchen", ("funnel",), (
        ("pour oil into a bottle with a narrow neck", "Set {tool} in the bottle's neck and pour the oil slowly."),
        ("fill a small salt shaker without spilling", "Put {tool} in the shaker's opening and pour the salt in."),
    )),
    Tool("colander", "kitchen", ("drain",), (
        ("drain the water from cooked pasta", "Pour the pasta into {tool} over the sink."),
        ("rinse a bowl of fresh berries", "Put the berries in {tool} and run cold water over them."),
    )),
    Tool("whisk", "kitchen", ("beat",), (
        ("beat egg whites until they are fluffy", "Stir the egg whites very quickly with {tool}."),
        ("mix lumps out of pancake batter", "Beat the batter with {tool} until it is smooth."),
    )),
    Tool("ladle", "kitchen", ("serve", "scoop"), (
        ("serve soup from a big pot into bowls", "Scoop the soup into each bowl with {tool}."),
        ("pour hot gravy over a plate of potatoes", "Dip {tool} into the gravy and pour it over the potatoes."),
    )),
    Tool("spatula", "kitchen", ("flip", "grab hot"), (
        ("flip a pancake in a frying pan", "Slide {tool} under the pancake and turn it over."),
        ("lift cookies off a baking tray", "Slide {tool} under each cookie and move it to a plate."),
    )),
    Tool("rolling pin", "kitchen", ("roll",), (
        ("flatten dough for a pie crust", "Roll {tool} back and forth over the dough."),
        ("crush crackers into crumbs", "Put the crackers in a bag and roll {tool} over them."),
    )),
    Tool("cheese grater", "kitchen", ("grate",), (
        ("shred a block of cheese for tacos", "Rub the cheese up and down against {tool}."),
        ("make thin strips of carrot for a salad", "Rub the carrot against the holes of {tool}."),
    )),
    Tool("vegetable peeler", "kitchen", ("peel",), (
        ("remove the skin from a carrot", "Run {tool} down the carrot from top to bottom."),
        ("peel a potato before boiling it", "Scrape {tool} along the potato until the skin is off."),
    )),
    Tool("can opener", "kitchen", ("open can",), (
        ("open a can of beans", "Clamp {tool} onto the rim and turn the handle around the lid."),
        ("get the lid off a can of soup", "Fit {tool} on the edge of the can and crank it around."),
    )),
    Tool("bottle opener", "kitchen", ("open bottle",), (
        ("take the metal cap off a glass bottle", "Hook {tool} under the cap and lift."),
        ("open a bottle of soda with a metal cap", "Fit {tool} over the cap and pry it up."),
    )),
    Tool("oven mitt", "kitchen", ("hold hot", "grab hot"), (
        ("take a hot tray of cookies out of the oven", "Put on {tool} and grab the tray."),
        ("move a hot pot off the stove", "Hold the pot's handle with {tool} and lift it."),
    )),
    Tool("kettle", "kitchen", ("boil",), (
        ("heat water for a cup of tea", "Fill {tool} with water and set it to boil."),
        ("get boiling water for instant noodles", "Boil water in {tool} and pour it over the noodles."),
    )),
    Tool("measuring cup", "kitchen", ("measure volume", "scoop"), (
        ("add exactly one cup of flour to a recipe", "Scoop the flour into {tool} and level it off."),
        ("pour half a cup of milk into a batter", "Fill {tool} to the half line and pour it in."),
    )),
    Tool("pair of tongs", "kitchen", ("grab hot",), (
        ("turn sausages over on a hot grill", "Grab each sausage with {tool} and turn it."),
        ("lift corn on the cob out of boiling water", "Grip each cob with {tool} and lift it out."),
    )),
    Tool("kitchen knife", "kitchen", ("cut", "peel", "sharpen", "screw"), (
        ("slice a loaf of bread", "Cut the loaf into slices with {tool}."),
        ("cut an apple into quarters", "Set the apple on a board and cut it with {tool}."),
    )),
    Tool("toaster", "kitchen", ("toast", "reheat"), (
        ("make crispy toast for breakfast", "Put a slice of bread in {tool} and push the lever down."),
        ("warm a frozen waffle", "Drop the waffle into {tool} and toast it."),
    )),
    Tool("blender", "kitchen", ("blend", "beat"), (
        ("make a smooth fruit smoothie", "Put fruit and milk in {tool} and run it until smooth."),
        ("turn cooked vegetables into a smooth soup", "Pour the soup into {tool} and blend it."),
    )),
    Tool("corkscrew", "kitchen", ("uncork", "open bottle"), (
        ("pull the cork out of a bottle", "Twist {tool} into the cork and pull it out."),
        ("open a bottle sealed with a tight cork", "Wind {tool} into the cork, then lever it out."),
    )),
    Tool("toothbrush", "bathroom", ("teeth", "scrub"), (
        ("clean your teeth after breakfast", "Put toothpaste on {tool} and brush for two minutes."),
        ("get bits of food off your back teeth", "Brush the back teeth carefully with {tool}."),
    )),
    Tool("comb", "bathroom", ("hair",), (
        ("untangle wet hair after a bath", "Gently pull {tool} through the hair from the ends up."),
        ("part your hair neatly on one side", "Draw a straight line through your hair with {tool}."),
    )),
    Tool("hair dryer", "bathroom", ("dry",), (
        ("dry wet hair quickly", "Blow warm air over the hair with {tool}."),
        ("dry a damp spot on a shirt before school", "Blow warm air on the damp spot with {tool}."),
    )),
    Tool("pair of nail clippers", "bathroom", ("cut",), (
        ("trim long fingernails", "Snip each nail short with {tool}."),
        ("shorten a broken toenail", "Clip the broken edge off with {tool}."),
    )),
    Tool("pair of tweezers", "bathroom", ("pinch",), (
        ("pull a small splinter out of a finger", "Grab the end of the splinter with {tool} and pull."),
        ("pick a tiny bead up off the table", "Pinch the bead with {tool} and lift it."),
    )),
    Tool("bandage", "bathroom", ("wound",), (
        ("cover a small cut on a knee", "Clean the cut and stick {tool} over it."),
        ("protect a blister on a heel", "Put {tool} over the blister before wearing shoes."),
    )),
    Tool("thermometer", "bathroom", ("temperature",), (
        ("check whether a child has a fever", "Place {tool} under the child's tongue and read it."),
        ("check how warm the bath water is for a baby", "Dip {tool} in the water and read the number."),
    )),
    Tool("pair of scissors", "office", ("cut",), (
        ("cut a picture out of a magazine", "Snip carefully around the picture with {tool}."),
        ("cut a piece of ribbon from a roll", "Hold the ribbon tight and cut it with {tool}."),
    )),
    Tool("stapler", "office", ("fasten",), (
        ("fasten three sheets of paper together", "Line up the sheets and press {tool} down on the corner."),
        ("pin a paper notice to a cork board", "Open {tool} flat and press the notice onto the board."),
    )),
    Tool("roll of tape", "office", ("fasten",), (
        ("seal a cardboard box for shipping", "Run a strip from {tool} along the seam of the box."),
        ("fix a torn page in a book", "Lay a thin strip from {tool} over the tear."),
    )),
    Tool("glue stick", "office", ("fasten",), (
        ("stick a photo onto a page of a scrapbook", "Rub {tool} on the back of the photo and press it down."),
        ("attach paper leaves to a drawing of a tree", "Rub {tool} on each paper leaf and press it on."),
    )),
    Tool("ruler", "office", ("measure", "straight"), (
        ("draw a straight line across a page", "Hold {tool} flat and trace along its edge."),
        ("measure the length of a pencil", "Lay the pencil along {tool} and read the number at its tip."),
    )),
    Tool("eraser", "office", ("erase",), (
        ("remove a pencil mark from a drawing", "Rub {tool} over the mark gently."),
        ("fix a wrong answer written in pencil", "Rub out the answer with {tool} and write it again."),
    )),
    Tool("pencil sharpener", "office", ("sharpen",), (
        ("make a dull pencil pointed again", "Twist the pencil inside {tool}."),
        ("sharpen a colored pencil for drawing", "Turn the colored pencil in {tool} a few times."),
    )),
    Tool("magnifying glass", "office", ("magnify",), (
        ("read the tiny print on a medicine label", "Hold {tool} over the label."),
        ("look closely at the legs of an ant", "Hold {tool} just above the ant."),
    )),
    Tool("hole punch", "office", ("punch", "hole"), (
        ("make holes in papers to put them in a binder", "Slide the papers into {tool} and press down."),
        ("make a hole in a gift tag for a ribbon", "Put the corner of the tag in {tool} and squeeze."),
    )),
    Tool("calculator", "office", ("compute",), (
        ("add up a long list of prices quickly", "Type each price into {tool} and press the plus key."),
        ("work out what one third of 951 is", "Type 951 into {tool} and divide it by three."),
    )),
    Tool("umbrella", "outdoor", ("rain",), (
        ("stay dry while walking in the rain", "Open {tool} and hold it over your head."),
        ("keep rain off a baby stroller", "Hold {tool} over the stroller as you walk."),
    )),
    Tool("compass", "outdoor", ("direction",), (
        ("find which way is north on a hike", "Hold {tool} flat and wait for the needle to settle."),
        ("head east through a thick forest", "Turn until the needle of {tool} shows east is in front of you."),
    )),
    Tool("fishing rod", "outdoor", ("fish",), (
        ("catch a fish from a pier", "Bait the hook and cast the line out with {tool}."),
        ("catch a trout in a mountain stream", "Cast the baited line into the stream with {tool}."),
    )),
    Tool("butterfly net", "outdoor", ("net", "fish"), (
        ("catch a butterfly to look at it closely", "Swing {tool} gently over the butterfly."),
        ("catch a moth that is flying around the porch light", "Sweep {tool} around the moth."),
    )),
    Tool("bicycle pump", "outdoor", ("inflate",), (
        ("fill a flat bicycle tire with air", "Attach {tool} to the valve and push the handle."),
        ("pump up a soft soccer ball", "Push the needle of {tool} into the ball and pump."),
    )),
    Tool("padlock", "outdoor", ("lock",), (
        ("keep a bike from being stolen at school", "Chain the bike to the rack and close {tool}."),
        ("keep a garden shed shut while you are away", "Hook {tool} through the latch and click it closed."),
    )),
    Tool("pair of binoculars", "outdoor", ("see far",), (
        ("watch birds at the top of a tall tree", "Look up at the birds through {tool}."),
        ("read a far-away sign on a hill", "Look at the sign through {tool}."),
    )),
    Tool("needle and thread", "home", ("sew",), (
        ("sew a loose button back onto a shirt", "Stitch the button in place with {tool}."),
        ("fix a small hole in a sock", "Stitch the edges of the hole together with {tool}."),
    )),
    Tool("clothes iron", "home", ("press", "dry"), (
        ("remove wrinkles from a cotton shirt", "Press {tool} slowly over the shirt."),
        ("make a sharp fold in a pair of pants", "Fold the pants and press the fold with {tool}."),
    )),
    Tool("clothespin", "home", ("clip", "fasten"), (
        ("hang a wet sock on a clothesline", "Clip the sock to the line with {tool}."),
        ("keep an open bag of chips closed", "Roll the top of the bag down and clip it with {tool}."),
    )),
    Tool("coat hanger", "home", ("hang",), (
        ("hang a jacket in the closet", "Put the jacket on {tool} and hook it on the rod."),
        ("keep a dress shirt from getting wrinkled", "Hang the shirt on {tool} in the closet."),
    )),
    Tool("match", "home", ("fire",), (
        ("light a birthday candle", "Strike {tool} and hold the flame to the wick."),
        ("light the paper under a pile of firewood", "Strike {tool} and touch the flame to the paper."),
    )),
    Tool("alarm clock", "home", ("wake",), (
        ("wake up at six in the morning", "Set {tool} for six o'clock before going to bed."),
        ("make sure you wake up in time for an early train", "Set {tool} an hour before the train leaves."),
    )),
    Tool("bucket", "home", ("carry water", "water", "scoop"), (
        ("carry water from a lake to put out a campfire", "Fill {tool} at the lake and pour it on the fire."),
        ("soak a dirty mop in soapy water", "Fill {tool} with soapy water and dip the mop in it."),
    )),
    Tool("microwave oven", "home", ("reheat", "boil"), (
        ("warm up a bowl of leftover soup", "Put the bowl in {tool} for two minutes."),
        ("melt a little butter for popcorn", "Heat the butter in a small dish in {tool}."),
    )),
)

# Goals that need a material property rather than a tool: (key, goal, method with {obj},
# property, value needed, largest size class that makes sense).
MATERIAL_GOALS = (
    ("soak", "soak up a small puddle of spilled milk", "Press {obj} onto the puddle until the milk is gone.",
     "absorbs", True, 3),
    ("bobber", "keep a fishing line floating near the top of the water",
     "Tie {obj} to the line a little above the hook.", "floats", True, 2),
    ("sinker", "make a fishing line sink to the bottom of a pond", "Tie {obj} to the end of the line.",
     "floats", False, 2),
    ("circuit", "connect a battery to a small bulb so that it lights up",
     "Join the battery and the bulb with {obj}.", "conducts", True, 2),
    ("kindling", "get a campfire started under a pile of sticks", "Light {obj} under the sticks.",
     "burns", True, 3),
)
# Keeping papers from blowing away needs something heavy but small; light things do not work.
PAPERWEIGHT_GOAL = ("keep a pile of papers from blowing away on a windy porch",
                    "Set {obj} on top of the pile.")


# ----------------------------------------------------------------------------- social situations
@dataclass(frozen=True)
class Situation:
    """A short social situation about {N} (and sometimes {O}) with its usual reactions.

    Placeholders: {N} {he} {him} {his} for the main person, {O} {o_he} {o_him} {o_his} for the
    other. ``feel`` and ``other_feel`` are feelings; ``want``/``intent``/``need`` are phrases.
    """

    key: str
    topic: str
    text: str
    feel: str | None
    valence: int  # +1 good, -1 bad for {N}
    want: str | None = None
    intent: str | None = None
    need: str | None = None
    other_feel: str | None = None
    close: tuple[str, ...] = ()  # feelings that could also fit: never used as distractors


POSITIVE_FEELINGS = ("happy", "proud", "excited", "grateful", "relieved", "cheerful", "pleased", "delighted",
                     "thrilled", "amazed", "glad", "loved", "calm", "confident")
NEGATIVE_FEELINGS = ("sad", "angry", "scared", "embarrassed", "nervous", "lonely", "guilty", "disappointed",
                     "upset", "worried", "annoyed", "frustrated", "hurt", "miserable", "jealous")

SITUATIONS: tuple[Situation, ...] = (
    Situation("science_fair", "school", "{N} won first prize at the school science fair.", "proud", 1,
              want="to show the blue ribbon to {his} parents", need="to build a project for the fair"),
    Situation("spelling_bee", "school", "{N} misspelled an easy word in front of everyone at the spelling bee.",
              "embarrassed", -1, want="to practice more spelling words at home",
              need="to sign up for the spelling bee"),
    Situation("forgot_homework", "school", "{N} left {his} finished homework at home on the day it was due.",
              "worried", -1, want="to explain the problem to the teacher", need="to finish the homework"),
    Situation("lent_pencil", "school", "{N} lent {O} a pencil during the math test.", "glad", 1,
              want="to get the pencil back after the test", intent="to help {O} finish the test",
              need="to bring an extra pencil to school", other_feel="grateful",
              close=("nervous", "worried")),
    Situation("handmade_card", "friends", "{N} gave {O} a handmade card for {o_his} birthday.", "happy", 1,
              want="to watch {O} open the card", intent="to celebrate {O}'s birthday",
              need="to draw and fold the card", other_feel="loved"),
    Situation("dog_ran_away", "pets", "{N}'s dog ran away during a thunderstorm.", "worried", -1,
              want="to search the neighborhood for the dog"),
    Situation("new_puppy", "pets", "{N} adopted a puppy from the animal shelter.", "excited", 1,
              want="to choose a name for the puppy", intent="to give a dog a loving home",
              need="to fill out the shelter's adoption form"),
    Situation("spilled_juice", "food", "{N} knocked over a full glass of juice at a dinner party.",
              "embarrassed", -1, want="to wipe up the juice with a napkin"),
    Situation("welcome_cookies", "food", "{N} baked cookies for {O}, who had just moved in next door.",
              "happy", 1, want="to carry the plate of cookies next door", intent="to welcome {O} to the street",
              need="to buy flour and sugar", other_feel="grateful", close=("nervous",)),
    Situation("burned_rice", "food", "{N} burned the rice while cooking dinner for the family.", "frustrated", -1,
              want="to cook a new pot of rice", need="to put the rice on the stove"),
    Situation("broke_vase", "home", "{N} accidentally broke {O}'s favorite vase.", "guilty", -1,
              want="to say sorry to {O}", other_feel="upset"),
    Situation("cleaned_room", "home", "{N} cleaned {his} messy bedroom without being asked.", "proud", 1,
              want="to relax in the tidy room", intent="to surprise {his} parents",
              need="to get a trash bag for the mess"),
    Situation("lost_final", "sports", "{N}'s soccer team lost the final game by one goal.", "disappointed", -1,
              want="to practice harder before next season", close=("proud",)),
    Situation("winning_goal", "sports", "{N} scored the winning goal in the last minute of the game.",
              "thrilled", 1, want="to celebrate with {his} teammates", need="to join the soccer team"),
    Situation("twisted_ankle", "sports", "{N} twisted {his} ankle while running on the track.", "hurt", -1,
              want="to put an ice pack on the sore ankle"),
    Situation("solo_song", "music", "{N} had to sing alone on stage in front of the whole school.", "nervous",
              -1, want="to take a deep breath before starting", need="to learn the words of the song",
              close=("excited", "confident", "thrilled")),
    Situation("concert_tickets", "music", "{N} surprised {O} with tickets to {o_his} favorite band's concert.",
              "happy", 1, want="to go to the concert with {O}", intent="to give {O} a night of {o_his} favorite music",
              need="to save money for the tickets", other_feel="delighted"),
    Situation("friend_moved", "friends", "{N}'s best friend moved to a city far away.", "lonely", -1,
              want="to call the friend every weekend"),
    Situation("new_friend", "school", "{N} made a new friend on the first day at a new school.", "relieved", 1,
              want="to sit with the new friend at lunch", close=("nervous",)),
    Situation("not_invited", "friends", "{N} found out that {O} had not invited {him} to the party.", "hurt", -1,
              want="to ask {O} why"),
    Situation("apology", "friends", "{N} told {O} sorry for yelling during the board game.", None, 1,
              want="to finish the board game together", intent="to make peace with {O}",
              need="to admit that {he} had been wrong"),
    Situation("rained_picnic", "weather", "Heavy rain ruined the picnic that {N} had planned for weeks.",
              "disappointed", -1, want="to plan the picnic for another day", need="to pack a basket of food"),
    Situation("snow_day", "weather", "School was closed for snow, so {N} had the whole day off.", "excited", 1,
              want="to build a snowman in the yard"),
    Situation("returned_wallet", "shopping", "{N} found a wallet on the sidewalk and returned it to {O}.",
              "pleased", 1, intent="to give {O} back what was lost",
              need="to look inside the wallet for the owner's name", other_feel="thankful"),
    Situation("lost_keys", "home", "{N} could not find {his} house keys after school.", "frustrated", -1,
              want="to call a parent to come and open the door"),
    Situation("summer_job", "work", "{N} got the summer job {he} had applied for.", "happy", 1,
              want="to tell {his} family the good news", need="to write a letter explaining why {he} wanted the job",
              close=("nervous", "worried")),
    Situation("missed_bus", "travel", "{N} missed the bus and was late for an important exam.", "upset", -1,
              want="to ask the teacher if {he} can still take the exam"),
    Situation("first_tooth", "family", "{N} lost {his} first baby tooth while eating an apple.", "excited", 1,
              want="to put the tooth under {his} pillow"),
    Situation("flu", "health", "{N} caught the flu and had to stay in bed all week.", "miserable", -1,
              want="to stay in bed until the fever is gone"),
    Situation("hospital_visit", "health", "{N} visited {O} in the hospital after {o_his} surgery.", "glad", 1,
              want="to bring {O} flowers next time", intent="to cheer {O} up while {o_he} recovered",
              need="to find out the visiting hours", close=("worried", "sad", "upset")),
    Situation("taught_bike", "family", "{N} taught {his} little brother how to ride a bike.", "proud", 1,
              want="to ride bikes together in the park", intent="to help {his} brother learn",
              need="to get the bike out of the garage", close=("frustrated",)),
    Situation("broken_robot", "family", "{N}'s little sister broke {his} new toy robot on purpose.", "angry", -1,
              want="to tell a parent what happened"),
    Situation("surprise_party", "friends", "{N}'s friends threw {him} a surprise party.", "delighted", 1,
              want="to thank everyone for coming", close=("embarrassed",)),
    Situation("bad_haircut", "shopping", "{N} got a very short haircut that {he} did not like.", "unhappy", -1,
              want="to wear a hat for a few days"),
    Situation("saved_for_bike", "shopping", "{N} saved {his} pocket money for months and bought a new bike.",
              "proud", 1, want="to ride the new bike around the block", intent="to have a bike of {his} own"),
    Situation("cracked_phone", "shopping", "{N} dropped {his} phone and cracked the screen.", "upset", -1,
              want="to take the phone to a repair shop"),
    Situation("helped_move", "home", "{N} spent the whole day helping {O} carry boxes into a new house.", None,
              -1, want="to lie down and nap after all the heavy lifting", intent="to help {O} move",
              need="to get to {O}'s house early",
              other_feel="grateful"),
    Situation("shouted_at", "school", "{O} shouted at {N} in front of the whole class.", "embarrassed", -1,
              want="to stay away from {O} for the rest of the day"),
    Situation("painting_praise", "art", "{O} told {N} that {his} painting was beautiful.", "pleased", 1,
              want="to paint another picture", close=("embarrassed",)),
    Situation("soaked_painting", "art", "{N}'s painting got soaked in the rain on the way to class.", "sad", -1,
              want="to paint the picture again"),
    Situation("lost_in_city", "travel", "{N} got lost in a big city without a map or a phone.", "scared", -1,
              want="to ask someone for directions"),
    Situation("beach_day", "travel", "{N} spent a sunny day swimming at the beach with {his} family.", "happy",
              1, want="to go back to the beach soon"),
    Situation("late_for_friend", "friends", "{N} arrived an hour late to meet {O} at the cafe.", "guilty", -1,
              want="to buy {O} a drink to say sorry", other_feel="annoyed"),
    Situation("shared_lunch", "food", "{N} shared {his} lunch with {O}, who had left {o_his} lunch at home.", "glad", 1,
              intent="to make sure {O} had something to eat", need="to split the sandwich in half",
              other_feel="thankful"),
    Situation("sick_cat", "pets", "{N}'s cat stopped eating and seemed sick.", "worried", -1,
              want="to take the cat to the vet"),
    Situation("forgot_fish", "pets", "{N} forgot to feed the class goldfish over the long weekend.", "guilty",
              -1, want="to feed the goldfish right away"),
    Situation("ripe_tomatoes", "nature", "The tomatoes that {N} planted in spring finally turned ripe.",
              "pleased", 1, want="to pick the tomatoes for a salad", need="to water the plants every day"),
    Situation("bee_sting", "nature", "{N} was stung by a bee while picking flowers.", "hurt", -1,
              want="to put something cold on the sting"),
    Situation("thunder_alone", "weather", "{N} heard loud thunder while alone at home at night.", "scared", -1,
              want="to turn on all the lights"),
    Situation("driving_test", "travel", "{N} passed {his} driving test on the first try.", "proud", 1,
              want="to take the car for a drive", need="to practice driving with a parent"),
    Situation("failed_math", "school", "{N} failed a math test even after studying all week.", "disappointed",
              -1, want="to ask the teacher for extra help"),
    Situation("lost_borrowed_book", "school", "{N} lost the book {he} had borrowed from {O}.", "guilty", -1,
              want="to buy {O} a new copy of the book", other_feel="annoyed"),
    Situation("park_cleanup", "nature", "{N} spent Saturday morning picking up trash in the park.", "pleased", 1,
              want="to sort the trash for recycling", intent="to keep the park clean",
              need="to bring gloves and trash bags"),
    Situation("last_slice", "food", "{N} ate the last slice of pizza that {O} was saving.", None, 0,
              want="to order another pizza for {O}", other_feel="annoyed"),
    Situation("boss_praise", "work", "{N}'s boss praised {his} work in front of the whole team.", "proud", 1,
              want="to thank the boss for the kind words", close=("embarrassed",)),
    Situation("coffee_stain", "work", "{N} spilled coffee on {his} shirt right before a job interview.",
              "embarrassed", -1, want="to clean the stain in the restroom"),
    Situation("piano_recital", "music", "{N} played every note perfectly at the piano recital.", "proud", 1,
              want="to bow to the audience", need="to practice the piece many times",
              close=("nervous",)),
    Situation("loud_neighbor", "home", "{N}'s neighbor played loud music until two in the morning.", "annoyed",
              -1, want="to ask the neighbor to turn it down"),
    Situation("wet_kitten", "pets", "{N} found a tiny kitten shivering in the rain.", "worried", -1,
              want="to bring the kitten inside and dry it", close=("happy", "glad")),
    Situation("starry_night", "nature", "{N} went camping and saw a sky full of stars.", "amazed", 1,
              want="to take a photo of the stars"),
    Situation("stuck_elevator", "travel", "{N} got stuck in an elevator for an hour.", "scared", -1,
              want="to take the stairs from now on"),
    Situation("team_captain", "sports", "The coach chose {N} to be the captain of the team.", "proud", 1,
              want="to lead the warm-up at the next practice", close=("nervous", "worried")),
    Situation("rained_laundry", "home", "{N} hung the laundry outside, and then it started to pour.", "annoyed",
              -1, want="to bring the wet clothes inside"),
    Situation("grandpa_call", "family", "{N} called {his} grandfather to wish him a happy birthday.", "happy", 1,
              want="to visit {his} grandfather soon", intent="to make {his} grandfather feel remembered",
              need="to find {his} grandfather's phone number"),
    Situation("carried_groceries", "shopping", "{N} helped an old man carry his heavy groceries to his car.",
              "pleased", 1, want="to finish {his} own shopping", intent="to be kind to the old man"),
    Situation("no_show", "friends", "{O} promised to come to {N}'s school play but never showed up.",
              "disappointed", -1, want="to ask {O} what happened"),
    Situation("won_raffle", "shopping", "{N} won a new bike in the town raffle.", "thrilled", 1,
              want="to ride the bike home"),
    Situation("lost_race", "sports", "{N} tripped and came in last in the school race.", "embarrassed", -1,
              want="to brush the dirt off {his} knees"),
    Situation("gift_for_teacher", "school", "{N} gave {O}, {his} teacher, a thank-you note on the last day.",
              "happy", 1, intent="to thank {O} for a great year", need="to write the note",
              other_feel="touched", close=("sad", "lonely")),
    Situation("tied_shoe", "family", "{N} tied {his} own shoelaces for the first time.", "proud", 1,
              want="to show {his} mother the bow"),
)
# Extra feelings used only as correct answers; they count as their sign for distractors.
EXTRA_FEELINGS = {"tired": -1, "unhappy": -1, "touched": 1, "thankful": 1}


# ----------------------------------------------------------------------------- event scripts
@dataclass(frozen=True)
class Script:
    """An everyday activity as steps in their usual order; each step is a verb phrase about one
    person ({his} = his/her). Each step needs the one before it, so a step two ahead or an earlier
    one is never the next thing that happens."""

    activity: str
    area: str
    steps: tuple[str, ...]


SCRIPTS: tuple[Script, ...] = (
    Script("Making tea", "kitchen", (
        "fills a kettle with water", "puts the kettle on the stove", "waits for the water to boil",
        "pours the hot water over a tea bag in a mug", "lets the tea steep for a few minutes",
        "takes out the tea bag and sips the tea")),
    Script("Brushing teeth", "bathroom", (
        "wets {his} toothbrush under the tap", "squeezes toothpaste onto the brush",
        "scrubs {his} teeth in small circles", "spits the foam into the sink",
        "rinses {his} mouth with a cup of water", "puts the toothbrush back in its holder")),
    Script("Planting a seed", "garden", (
        "fills a small pot with soil", "pokes a hole in the soil with a finger", "drops a seed into the hole",
        "covers the seed with soil", "waters the pot gently", "sets the pot on a sunny windowsill")),
    Script("Washing dishes", "kitchen", (
        "fills the sink with warm soapy water", "puts the dirty plates into the water",
        "scrubs each plate with a sponge", "rinses the plates under clean water",
        "stacks the wet plates on a drying rack", "puts the dry plates away in the cupboard")),
    Script("Making a sandwich", "kitchen", (
        "takes two slices of bread out of the bag", "spreads butter on one slice",
        "lays cheese and ham on the buttered slice", "places the second slice on top",
        "cuts the sandwich in half", "eats the sandwich at the table")),
    Script("Fixing a flat bike tire", "workshop", (
        "flips the bike upside down", "takes the wheel off the frame", "pulls the old tube out of the tire",
        "fits a new tube inside the tire", "pumps air into the new tube", "puts the wheel back on the bike")),
    Script("Washing a car", "outdoors", (
        "parks the car in the driveway", "sprays the car with the hose", "scrubs the car with a soapy mitt",
        "rinses the soap off with the hose", "dries the car with a soft towel")),
    Script("Mailing a letter", "home", (
        "writes a letter to {his} friend", "folds the letter and puts it in an envelope",
        "writes the address on the envelope", "sticks a stamp in the corner",
        "drops the envelope into the mailbox")),
    Script("Baking a cake", "kitchen", (
        "turns on the oven to heat it", "mixes flour, sugar and eggs in a bowl",
        "pours the batter into a cake pan", "puts the pan in the hot oven",
        "takes the cake out when it is golden", "lets the cake cool before slicing it")),
    Script("Doing laundry", "home", (
        "sorts the dirty clothes into piles", "loads a pile of clothes into the washing machine",
        "adds soap and starts the machine", "moves the wet clothes into the dryer",
        "folds the warm, dry clothes", "puts the folded clothes in the drawers")),
    Script("Going to bed", "home", (
        "closes the bedroom curtains", "puts on {his} pajamas", "climbs into bed",
        "reads a few pages of a book", "turns off the bedside lamp", "falls asleep")),
    Script("Painting a wall", "workshop", (
        "moves the furniture away from the wall", "covers the floor with an old sheet",
        "opens the can of paint and stirs it", "rolls paint onto the wall",
        "waits for the first coat to dry", "rolls on a second coat of paint")),
    Script("Making pancakes", "kitchen", (
        "cracks eggs into a bowl of flour and milk", "whisks the mixture into a smooth batter",
        "heats a pan with a little butter", "pours a scoop of batter into the pan",
        "flips the pancake when bubbles appear", "slides the pancake onto a plate")),
    Script("Wrapping a present", "home", (
        "puts the gift in a box", "cuts a piece of wrapping paper", "folds the paper around the box",
        "tapes the edges of the paper down", "ties a ribbon around the package",
        "sticks a name tag on top")),
    Script("Building a campfire", "outdoors", (
        "clears a spot on the ground", "makes a ring of stones", "piles dry sticks in the middle of the ring",
        "lights the sticks with a match", "adds bigger logs as the fire grows",
        "pours water on the fire before leaving")),
    Script("Setting up a tent", "outdoors", (
        "unrolls the tent on flat ground", "slides the poles through the sleeves of the tent",
        "raises the tent by bending the poles", "pushes stakes into the ground at each corner",
        "tosses {his} sleeping bag inside the tent")),
    Script("Taking a shower", "bathroom", (
        "turns on the shower", "waits for the water to get warm", "steps into the shower",
        "washes {his} hair with shampoo", "rinses the shampoo out of {his} hair",
        "turns off the water and dries off with a towel")),
    Script("Shopping for groceries", "errand", (
        "writes a shopping list", "drives to the supermarket", "takes a cart at the entrance",
        "puts the items from the list in the cart", "pays for the food at the checkout",
        "loads the grocery bags into the car")),
    Script("Feeding a dog", "pets", (
        "takes the bag of dog food from the shelf", "scoops food into the dog's bowl",
        "sets the bowl down on the kitchen floor", "watches the dog eat every bite",
        "washes the empty bowl")),
    Script("Ironing a shirt", "home", (
        "plugs in the iron and lets it heat up", "lays the shirt flat on the ironing board",
        "presses the iron over the collar", "irons the sleeves and the back",
        "hangs the smooth shirt on a hanger")),
    Script("Carving a pumpkin", "craft", (
        "cuts a circle around the pumpkin's stem", "lifts off the top of the pumpkin",
        "scoops out the seeds with a spoon", "carves a face into the side",
        "puts a small candle inside the pumpkin", "lights the candle so the face glows")),
    Script("Making lemonade", "kitchen", (
        "squeezes lemons into a pitcher", "adds sugar to the lemon juice", "pours in cold water",
        "stirs until the sugar dissolves", "drops ice cubes into the pitcher",
        "pours the lemonade into glasses")),
    Script("Mopping a floor", "home", (
        "sweeps the floor with a broom", "fills a bucket with soapy water", "dips the mop into the bucket",
        "wrings out the mop", "mops the floor from corner to corner",
        "waits for the floor to dry before walking on it")),
    Script("Bowling", "sports", (
        "picks a bowling ball from the rack", "puts {his} fingers in the holes of the ball",
        "walks up to the foul line", "rolls the ball down the lane", "watches the pins fall",
        "checks the score on the screen")),
    Script("Making a paper airplane", "craft", (
        "takes a clean sheet of paper", "folds the paper in half the long way",
        "folds the top corners down to the middle", "folds the sides down to make wings",
        "throws the plane into the air")),
    Script("Cooking pasta", "kitchen", (
        "fills a large pot with water", "brings the water to a boil", "adds a handful of salt",
        "drops the pasta into the pot", "drains the pasta in a colander", "mixes the pasta with sauce")),
    Script("Taking a photo", "craft", (
        "takes the camera out of its bag", "removes the lens cap", "points the camera at the mountain",
        "turns the lens until the picture is sharp", "presses the shutter button",
        "looks at the photo on the screen")),
    Script("Flying a kite", "outdoors", (
        "unwinds some string from the kite", "holds the kite up into the wind", "runs across the field",
        "lets out more string as the kite rises", "watches the kite fly high above",
        "winds the string back in to bring the kite down")),
    Script("Building a snowman", "outdoors", (
        "rolls a big ball of snow for the base", "rolls a smaller ball for the middle",
        "lifts the middle ball onto the base", "sets a small ball on top for the head",
        "pushes a carrot in for the nose", "wraps a scarf around the snowman's neck")),
    Script("Packing for a trip", "home", (
        "pulls a suitcase out of the closet", "lays the suitcase open on the bed",
        "folds clothes into the suitcase", "tucks {his} toothbrush into a side pocket",
        "zips the suitcase shut", "rolls the suitcase to the front door")),
    Script("Washing hands", "bathroom", (
        "turns on the tap at the sink", "wets {his} hands", "rubs soap between {his} palms",
        "scrubs between {his} fingers", "rinses the soap off {his} hands", "dries {his} hands on a towel")),
    Script("Changing a light bulb", "workshop", (
        "switches off the lamp", "lets the old bulb cool down", "unscrews the old bulb",
        "screws in a new bulb", "switches the lamp back on")),
    Script("Making a bed", "home", (
        "smooths the bottom sheet over the mattress", "tucks the sheet under the corners",
        "spreads the blanket on top", "fluffs the pillows", "places the pillows at the head of the bed")),
    Script("Raking leaves", "garden", (
        "puts on {his} garden gloves", "rakes the leaves into a big pile", "holds open a large yard bag",
        "scoops the leaves into the bag", "ties the bag shut", "drags the bag to the curb")),
    Script("Making popcorn", "kitchen", (
        "pours a little oil into a pot", "adds a handful of corn kernels", "puts the lid on the pot",
        "shakes the pot as the kernels pop", "pours the popcorn into a bowl",
        "sprinkles salt on the popcorn")),
    Script("Swimming laps", "sports", (
        "changes into {his} swimsuit", "puts on {his} goggles", "dives into the pool",
        "swims ten laps", "climbs out of the pool", "wraps up in a big towel")),
    Script("Frying an egg", "kitchen", (
        "heats oil in a frying pan", "cracks an egg into the pan", "waits until the egg white turns solid",
        "slides a spatula under the egg", "turns the egg over", "puts the egg on a slice of toast")),
    Script("Playing a board game", "play", (
        "opens the game box", "sets the board on the table", "hands out the pieces to each player",
        "rolls the dice to see who goes first", "moves {his} piece along the board",
        "puts the pieces back in the box after the game")),
    Script("Going fishing", "outdoors", (
        "puts a worm on the hook", "casts the line into the lake", "waits for a tug on the line",
        "reels in the fish", "takes the fish off the hook", "lets the fish go back into the water")),
    Script("Making a smoothie", "kitchen", (
        "peels a banana", "drops the banana and some berries into the blender", "pours in some milk",
        "puts the lid on the blender", "blends everything until smooth",
        "pours the smoothie into a tall glass")),
    Script("Borrowing a library book", "errand", (
        "walks into the library", "searches the shelves for a book", "checks out the book at the desk",
        "carries the book home", "reads the book in {his} favorite chair",
        "returns the book before the due date")),
    Script("Riding a bus", "errand", (
        "waits at the bus stop", "waves as the bus comes near", "climbs the steps onto the bus",
        "pays the fare to the driver", "sits down in an empty seat", "presses the button before {his} stop")),
    Script("Sewing on a button", "craft", (
        "threads a needle", "ties a knot at the end of the thread", "holds the button on the shirt",
        "pushes the needle through the holes many times", "ties off the thread under the button",
        "snips the extra thread with scissors")),
    Script("Filling a car with gas", "errand", (
        "pulls up next to a gas pump", "opens the car's fuel cap", "puts the nozzle into the tank",
        "squeezes the handle until the tank is full", "hangs the nozzle back on the pump",
        "closes the fuel cap")),
    Script("Cleaning a fish tank", "pets", (
        "scoops the fish into a small bowl", "drains the old water from the tank",
        "scrubs the glass inside the tank", "pours fresh water into the tank",
        "gently puts the fish back into the tank")),
    Script("Decorating a holiday tree", "home", (
        "sets up the tree in the living room", "wraps a string of lights around the branches",
        "hangs shiny ornaments on the branches", "places a star on the top of the tree",
        "switches on the tree lights")),
    Script("Bathing a dog", "pets", (
        "fills the tub with warm water", "lifts the dog into the tub", "rubs dog shampoo into the fur",
        "rinses the dog with clean water", "dries the dog with a big towel")),
    Script("Mowing the lawn", "garden", (
        "checks the lawn mower for gas", "starts the mower", "pushes the mower across the lawn in rows",
        "empties the bag of grass clippings", "rolls the mower back into the shed")),
    Script("Making coffee", "kitchen", (
        "pours water into the coffee maker", "puts a paper filter in the basket",
        "adds ground coffee to the filter", "presses the start button", "waits for the pot to fill",
        "pours the coffee into a cup")),
    Script("Hanging a picture", "workshop", (
        "holds the picture up against the wall", "marks the spot with a pencil",
        "taps a nail into the mark", "hangs the picture on the nail", "straightens the frame")),
    Script("Building a sandcastle", "outdoors", (
        "fills a bucket with wet sand", "packs the sand down tightly", "flips the bucket over",
        "lifts the bucket to leave a tower of sand", "carves windows into the tower with a stick",
        "digs a moat around the castle")),
    Script("Putting on roller skates", "sports", (
        "sits down on a bench", "slides {his} feet into the skates", "pulls the laces tight",
        "stands up slowly", "rolls forward across the rink")),
)
PEOPLE_NOUNS = (("A man", "m"), ("A woman", "f"), ("A boy", "m"), ("A girl", "f"), ("An old man", "m"),
                ("An old woman", "f"), ("A young man", "m"), ("A young woman", "f"), ("A father", "m"),
                ("A mother", "f"), ("A teenage boy", "m"), ("A teenage girl", "f"))


# ----------------------------------------------------------------------------- winogrande frames
# Twin sentences about two people A and B: (frame key, sentence with {A} {B} _, who the blank is).
# Each frame has two twins that differ in a word or two and flip the answer.
PEOPLE_TWINS = (
    ("directions", ("{A} asked {B} for directions because _ was lost in the town.", "A"),
     ("{A} asked {B} for directions because _ knew the town well.", "B")),
    ("pencil", ("{A} lent {B} a pencil because _ had forgotten one at home.", "B"),
     ("{A} lent {B} a pencil because _ had two of them.", "A")),
    ("shelf", ("{A} could not reach the top shelf, so {B} got the box down, because _ was taller.", "B"),
     ("{A} could not reach the top shelf, so {B} got the box down, because _ was shorter.", "A")),
    ("swim", ("{A} taught {B} how to swim because _ was a strong swimmer.", "A"),
     ("{A} taught {B} how to swim because _ was afraid of deep water.", "B")),
    ("vase", ("{A} said sorry to {B} because _ had broken the vase.", "A"),
     ("{A} said sorry to {B} because _ was upset about the broken vase.", "B")),
    ("race", ("{A} beat {B} in the race because _ was faster.", "A"),
     ("{A} beat {B} in the race because _ was slower.", "B")),
    ("notes", ("{A} called {B} to ask about the homework because _ had missed class.", "A"),
     ("{A} called {B} to ask about the homework because _ had taken good notes.", "B")),
    ("blanket", ("{A} gave {B} a blanket because _ was shivering.", "B"),
     ("{A} gave {B} a blanket because _ had an extra one.", "A")),
    ("lunch", ("{A} paid for {B}'s lunch because _ had forgotten a wallet.", "B"),
     ("{A} paid for {B}'s lunch because _ had just been paid.", "A")),
    ("contest", ("{A} congratulated {B} because _ had won the contest.", "B"),
     ("{A} congratulated {B} because _ was happy for the winner.", "A")),
    ("dinner", ("{A} cooked dinner for {B} because _ was a great cook.", "A"),
     ("{A} cooked dinner for {B} because _ was too tired to cook.", "B")),
    ("bags", ("{A} carried {B}'s bags because _ was strong.", "A"),
     ("{A} carried {B}'s bags because _ had a hurt arm.", "B")),
    ("math", ("{A} helped {B} with the math homework because _ was good at fractions.", "A"),
     ("{A} helped {B} with the math homework because _ was stuck on the fractions.", "B")),
    ("story", ("{A} read the story aloud to {B} because _ could not read yet.", "B"),
     ("{A} read the story aloud to {B} because _ was a good reader.", "A")),
    ("umbrella", ("{A} shared an umbrella with {B} because _ had not brought one.", "B"),
     ("{A} shared an umbrella with {B} because _ had a very big one.", "A")),
    ("station", ("{A} waited for {B} at the station because _ arrived early.", "A"),
     ("{A} waited for {B} at the station because _ was running late.", "B")),
    ("comfort", ("{A} comforted {B} because _ was crying.", "B"),
     ("{A} comforted {B} because _ could see something was wrong.", "A")),
    ("map", ("{A} gave {B} a map because _ did not know the way.", "B"),
     ("{A} gave {B} a map because _ knew the way by heart.", "A")),
    ("ladder", ("{A} borrowed a ladder from {B} because _ did not own one.", "A"),
     ("{A} borrowed a ladder from {B} because _ had two ladders.", "B")),
    ("chess", ("{A} won the chess game against {B} because _ had practiced for weeks.", "A"),
     ("{A} won the chess game against {B} because _ made a careless mistake.", "B")),
    ("bike", ("{A} asked {B} to fix the bike because _ was good with tools.", "B"),
     ("{A} asked {B} to fix the bike because _ did not know how.", "A")),
    ("answer", ("{A} whispered the answer to {B} because _ did not know it.", "B"),
     ("{A} whispered the answer to {B} because _ knew it.", "A")),
    ("jealous", ("{A} was jealous of {B} because _ got a new bike.", "B"),
     ("{A} was jealous of {B} because _ did not get a new bike.", "A")),
    ("thanks", ("{A} thanked {B} because _ had helped with the move.", "B"),
     ("{A} thanked {B} because _ was grateful for the help.", "A")),
    ("forgive", ("{A} forgave {B} because _ said sorry.", "B"),
     ("{A} forgave {B} because _ was not angry anymore.", "A")),
    ("drive", ("{A} drove {B} to the airport because _ did not have a car.", "B"),
     ("{A} drove {B} to the airport because _ had a car.", "A")),
    ("piano", ("{A} gave {B} piano lessons because _ had played for many years.", "A"),
     ("{A} gave {B} piano lessons because _ wanted to learn.", "B")),
    ("wake", ("{A} woke {B} up because _ had slept through the alarm.", "B"),
     ("{A} woke {B} up because _ had heard the alarm.", "A")),
    ("recipe", ("{A} asked {B} for the cake recipe because _ loved the cake.", "A"),
     ("{A} asked {B} for the cake recipe because _ had baked the cake.", "B")),
    ("tickets", ("{A} bought {B} a ticket to the show because _ had some extra money.", "A"),
     ("{A} bought {B} a ticket to the show because _ could not afford one.", "B")),
    ("heavy_box", ("{A} let {B} carry the lighter box because _ had a sore back.", "B"),
     ("{A} let {B} carry the lighter box because _ felt strong that day.", "A")),
    ("hide", ("{A} hid behind {B} because _ was scared of the big dog.", "A"),
     ("{A} hid behind {B} because _ was not afraid of the big dog.", "B")),
)

# Object twins that need a property of the two things: (frame, sentence with {N} {X} {Y} _,
# property, value the blank has). The blank is X when X has that value and Y does not.
PROPERTY_TWINS = (
    ("floated", "{N} dropped the {X} and the {Y} into the lake, and only the _ floated.", "floats", True),
    ("sank", "{N} dropped the {X} and the {Y} into the lake, and only the _ sank.", "floats", False),
    ("shattered", "{N} dropped the {X} and the {Y} on the stone floor, and only the _ shattered.",
     "fragile", True),
    ("unbroken", "{N} dropped the {X} and the {Y} on the stone floor, and only the _ stayed in one piece.",
     "fragile", False),
    ("stuck", "{N} held a magnet near the {X} and the {Y}, and only the _ stuck to it.", "magnetic", True),
    ("not_stuck", "{N} held a magnet near the {X} and the {Y}, but only the _ did not move at all.",
     "magnetic", False),
    ("melted", "{N} left the {X} and the {Y} in the hot sun, and only the _ melted.", "melts", True),
    ("kept_shape", "{N} left the {X} and the {Y} in the hot sun, and only the _ kept its shape.",
     "melts", False),
    ("soaked", "{N} wiped the spill with the {X} and then the {Y}, but only the _ soaked up the water.",
     "absorbs", True),
    ("stayed_dry", "{N} wiped the spill with the {X} and then the {Y}, but only the _ stayed dry.",
     "absorbs", False),
    ("lit_bulb", "{N} touched the {X} and the {Y} to the battery, and only the _ made the bulb light up.",
     "conducts", True),
    ("dark_bulb", "{N} touched the {X} and the {Y} to the battery, and only the _ left the bulb dark.",
     "conducts", False),
    ("see_through", "{N} held the {X} and the {Y} up to the lamp, and only the _ let the light shine through.",
     "transparent", True),
    ("blocked", "{N} held the {X} and the {Y} up to the lamp, and only the _ blocked all of the light.",
     "transparent", False),
)
# Size and weight twins: (frame, sentence, which of X/Y the blank is); X is the bigger/heavier one.
FIT_TWINS = (
    ("The {X} did not fit in the {Y} because the _ was too big.", "X"),
    ("The {X} did not fit in the {Y} because the _ was too small.", "Y"),
    ("{N} could not put the {X} into the {Y} because the _ was too large.", "X"),
    ("{N} could not put the {X} into the {Y} because the _ was too little.", "Y"),
)
LIFT_TWINS = (
    ("{N} could lift the {Y} with one hand but not the {X}, because the _ was too heavy.", "X"),
    ("{N} could lift the {Y} with one hand but not the {X}, because the _ was so light.", "Y"),
    ("{N} carried the {Y} upstairs easily but needed help with the {X}, because the _ weighed so much.", "X"),
    ("{N} carried the {Y} upstairs easily but needed help with the {X}, because the _ weighed so little.", "Y"),
)
PREDATOR_TWINS = (
    ("The {prey} hid from the {pred} because the _ was hungry.", "pred"),
    ("The {prey} hid from the {pred} because the _ was frightened.", "prey"),
    ("The {pred} chased the {prey} all morning because the _ wanted a meal.", "pred"),
    ("The {pred} chased the {prey} all morning, but the _ escaped into a hiding place.", "prey"),
    ("The {prey} froze when it saw the {pred}, because the _ was hunting.", "pred"),
    ("The {prey} froze when it saw the {pred}, because the _ was trying not to be seen.", "prey"),
)


# ----------------------------------------------------------------------------- science (ARC)
# Substances and their state at room temperature.
SUBSTANCES = (
    ("salt", "solid"), ("sugar", "solid"), ("sand", "solid"), ("chalk", "solid"), ("gold", "solid"),
    ("copper", "solid"), ("wood", "solid"), ("granite", "solid"), ("iron", "solid"), ("candle wax", "solid"),
    ("coal", "solid"), ("silver", "solid"), ("glass", "solid"), ("rubber", "solid"),
    ("water", "liquid"), ("milk", "liquid"), ("orange juice", "liquid"), ("vinegar", "liquid"),
    ("olive oil", "liquid"), ("honey", "liquid"), ("lemonade", "liquid"), ("apple juice", "liquid"),
    ("maple syrup", "liquid"), ("rubbing alcohol", "liquid"), ("soy sauce", "liquid"), ("gasoline", "liquid"),
    ("oxygen", "gas"), ("nitrogen", "gas"), ("carbon dioxide", "gas"), ("helium", "gas"), ("hydrogen", "gas"),
    ("neon", "gas"), ("air", "gas"), ("water vapor", "gas"), ("argon", "gas"),
)
STATES = ("solid", "liquid", "gas", "plasma")

# Body parts: (name, what it does as a question phrase, the same as an answer phrase).
BODY_PARTS = (
    ("the heart", "pumps blood through the body", "to pump blood through the body"),
    ("the lungs", "takes in oxygen from the air we breathe", "to take in oxygen from the air"),
    ("the stomach", "breaks down the food we swallow", "to break down swallowed food"),
    ("the brain", "controls thinking and movement", "to control thinking and movement"),
    ("the skin", "covers and protects the whole body", "to cover and protect the body"),
    ("the skeleton", "holds up and supports the body", "to hold up and support the body"),
    ("the muscles", "pulls on the bones to move the body", "to pull on bones so the body can move"),
    ("the eyes", "lets us see", "to let us see"),
    ("the ears", "lets us hear sounds", "to let us hear sounds"),
    ("the nose", "lets us smell", "to let us smell"),
    ("the tongue", "lets us taste food", "to let us taste food"),
    ("the teeth", "bites and chews food", "to bite and chew food"),
    ("the kidneys", "filters waste out of the blood", "to filter waste out of the blood"),
    ("the small intestine", "takes in nutrients from digested food",
     "to take in nutrients from digested food"),
)
PLANT_PARTS = (
    ("the roots", "takes in water from the soil", "to take in water from the soil"),
    ("the leaves", "makes food for the plant using sunlight", "to make food using sunlight"),
    ("the stem", "carries water from the roots up to the leaves", "to carry water up to the leaves"),
    ("the flower", "makes the seeds of the plant", "to make seeds"),
    ("the seed", "can grow into a new plant", "to grow into a new plant"),
    ("the fruit", "holds and protects the seeds", "to hold and protect the seeds"),
)
# Instruments: (name, purposes as "measure X" / "do Y" phrases).
INSTRUMENTS = (
    ("a thermometer", ("measure the temperature of a cup of water", "find out how hot the air is outside")),
    ("a ruler", ("measure the length of a leaf", "find out how long a pencil is")),
    ("a balance", ("measure the mass of a rock", "compare the mass of two apples")),
    ("a stopwatch", ("time how long it takes to run around a track", "measure how many seconds a race takes")),
    ("a graduated cylinder", ("measure the volume of some water",
                              "find out how many milliliters of juice are in a glass")),
    ("a rain gauge", ("measure how much rain fell overnight", "record the rainfall in a garden each day")),
    ("an anemometer", ("measure how fast the wind is blowing", "record the wind speed on a hill")),
    ("a wind vane", ("find out which way the wind is blowing", "show the direction of the wind")),
    ("a barometer", ("measure the air pressure", "track changes in air pressure before a storm")),
    ("a microscope", ("look at the tiny cells in an onion skin", "see tiny living things in a drop of pond water")),
    ("a telescope", ("look at the craters on the Moon", "see the rings of Saturn")),
    ("a compass", ("find which way is north", "tell which direction a trail is heading")),
)
# One-off science facts: (key, question, answer, distractors).
SCIENCE_FACTS = (
    ("closest_star", "What is the closest star to Earth?", "the Sun", ("the Moon", "Mars", "the North Star")),
    ("gravity", "What force pulls a dropped ball down toward the ground?", "gravity",
     ("magnetism", "friction", "electricity")),
    ("plants_co2", "Which gas do plants take in from the air to make food?", "carbon dioxide",
     ("helium", "neon", "argon")),
    ("breathe_o2", "Which gas do people need to breathe in to stay alive?", "oxygen",
     ("carbon dioxide", "helium", "neon")),
    ("year", "How long does it take Earth to travel once around the Sun?", "about one year",
     ("about one day", "about one week", "about one hour")),
    ("day", "How long does it take Earth to spin around once?", "about one day",
     ("about one year", "about one month", "about one minute")),
    ("moon_orbit", "Which object in the sky travels around Earth about once a month?", "the Moon",
     ("the Sun", "Mars", "the North Star")),
    ("precipitation", "What is the name for rain, snow or hail falling from clouds?", "precipitation",
     ("evaporation", "erosion", "pollination")),
    ("evaporation", "What is it called when liquid water slowly turns into a gas?", "evaporation",
     ("condensation", "freezing", "melting")),
    ("condensation", "What is it called when water vapor cools and turns into tiny drops of liquid?",
     "condensation", ("evaporation", "melting", "boiling")),
    ("melting", "What is it called when a solid turns into a liquid?", "melting",
     ("freezing", "condensation", "boiling")),
    ("freezing_point", "At what temperature does pure water freeze?", "0 degrees Celsius",
     ("50 degrees Celsius", "100 degrees Celsius", "200 degrees Celsius")),
    ("boiling_point", "At what temperature does pure water boil at sea level?", "100 degrees Celsius",
     ("0 degrees Celsius", "25 degrees Celsius", "50 degrees Celsius")),
    ("erosion", "What is it called when wind and water slowly wear away rock and soil?", "erosion",
     ("evaporation", "pollination", "condensation")),
    ("pollen", "What do bees carry from flower to flower that helps plants make seeds?", "pollen",
     ("sand", "salt", "wax")),
    ("red_planet", "Which planet is known as the red planet?", "Mars", ("Venus", "Jupiter", "Neptune")),
    ("largest_planet", "What is the largest planet in our solar system?", "Jupiter",
     ("Mercury", "Mars", "Venus")),
    ("nearest_planet", "Which planet is closest to the Sun?", "Mercury", ("Earth", "Jupiter", "Neptune")),
    ("surface_water", "What covers most of Earth's surface?", "water", ("sand", "forest", "ice")),
    ("earth_shape", "What is the shape of Earth?", "a sphere", ("a cube", "a flat square", "a cone")),
    ("predator", "What is an animal that hunts other animals for food called?", "a predator",
     ("a producer", "a decomposer", "a pollinator")),
    ("producer", "What is a living thing that makes its own food from sunlight called?", "a producer",
     ("a predator", "a consumer", "a decomposer")),
    ("decomposer", "Which living things break down dead leaves and logs on the forest floor?",
     "fungi and bacteria", ("hawks and owls", "deer and rabbits", "bees and butterflies")),
    ("lever", "What kind of simple machine is a seesaw?", "a lever", ("a pulley", "a screw", "a wedge")),
    ("ramp", "What kind of simple machine is a ramp?", "an inclined plane",
     ("a pulley", "a lever", "a wheel and axle")),
    ("metal_expand", "What happens to most metals when they are heated?", "they expand",
     ("they shrink", "they turn to gas at once", "they become magnetic")),
    ("sun_energy", "Where does almost all the energy in a food chain first come from?", "the Sun",
     ("the soil", "the Moon", "the wind")),
    ("battery_energy", "What kind of energy is stored in a battery?", "chemical energy",
     ("sound energy", "light energy", "wind energy")),
    ("photosynthesis", "What process do plants use to make food from sunlight?", "photosynthesis",
     ("digestion", "evaporation", "erosion")),
    ("fossil", "What are the remains of ancient living things preserved in rock called?", "fossils",
     ("minerals", "crystals", "magma")),
    ("renewable", "Which of these energy sources will not run out?", "sunlight",
     ("coal", "oil", "natural gas")),
    ("magnet_poles", "What happens when the north poles of two magnets are pushed together?", "they push apart",
     ("they stick together", "they melt", "they lose their color")),
)
DIETS = ("herbivore", "carnivore", "omnivore", "decomposer")


# ----------------------------------------------------------------------------- open-book facts (OBQA)
PLANTS = ("fern", "tomato plant", "bean plant", "sunflower", "rose bush", "basil plant", "mint plant",
          "daisy", "tulip", "pepper plant", "strawberry plant", "geranium", "lily", "violet", "marigold",
          "lettuce seedling", "pea plant", "corn seedling", "pumpkin vine", "orchid")
SEEDS = ("bean", "pea", "sunflower", "pumpkin", "corn", "radish", "squash", "melon", "carrot", "lettuce",
         "tomato", "cucumber", "spinach", "onion", "watermelon", "zucchini")
WATER_PLACES = ("puddle on the sidewalk", "bird bath", "bucket of water", "dog's water bowl",
                "small garden pond", "glass of water on the porch", "watering can full of water",
                "kiddie pool", "rain barrel", "tray of water", "flower vase full of water", "wet sponge")
MELTABLE = ("ice cube", "chocolate bar", "stick of butter", "scoop of ice cream", "icicle", "snowball",
            "frozen juice pop", "ice sculpture", "chocolate egg", "bowl of frozen yogurt", "snow cone",
            "ice cream sandwich")
COLOR_ITEMS = (("T-shirt", "T-shirts"), ("car", "cars"), ("hat", "hats"), ("towel", "towels"),
               ("backpack", "backpacks"), ("tent", "tents"), ("bike seat", "bike seats"),
               ("blanket", "blankets"), ("beach chair", "beach chairs"), ("cap", "caps"),
               ("jacket", "jackets"), ("bucket", "buckets"), ("mailbox", "mailboxes"), ("mug", "mugs"),
               ("raincoat", "raincoats"), ("skateboard", "skateboards"))
LIGHT_COLORS = ("white", "light yellow", "pale pink", "light gray", "cream")
DARK_COLORS = ("black", "dark brown", "dark blue", "dark green", "dark gray")
SLIDERS = ("hockey puck", "wooden block", "book", "toy sled", "box of crayons", "plastic lid", "coaster",
           "domino", "cardboard box", "lunch tray", "shoe", "metal can")
ROUGH_SURFACES = ("thick carpet", "sandpaper", "gravel", "long grass", "a rubber mat")
SMOOTH_SURFACES = ("smooth ice", "a polished wood floor", "a glass tabletop", "a waxed floor", "smooth tile")
TALL_THINGS = ("tree", "flagpole", "lamp post", "statue", "fence post", "mailbox", "telephone pole",
               "lighthouse", "snowman", "sign post", "bicycle", "basketball hoop", "windmill", "tent")
SHADOW_TOYS = ("toy robot", "teddy bear", "plastic dinosaur", "toy truck", "wooden horse", "rubber duck",
               "doll", "toy rocket", "stuffed rabbit", "toy boat")
# Camouflage: surface, the color that hides on it, colors that do not.
SURFACES = (("fresh white snow", "white", ("bright red", "black", "bright orange")),
            ("green grass", "green", ("bright red", "white", "bright yellow")),
            ("dark tree bark", "dark brown", ("white", "bright yellow", "bright pink")),
            ("pale yellow sand", "sandy yellow", ("black", "bright blue", "bright red")),
            ("black rock", "black", ("white", "bright yellow", "bright orange")))
CAMO_ANIMALS = ("rabbit", "mouse", "lizard", "frog", "moth", "grasshopper", "beetle", "snake", "toad",
                "gecko", "cricket", "spider", "hamster", "squirrel", "salamander", "newt")
LIVING_THINGS = ("oak tree", "mushroom", "goldfish", "rose bush", "earthworm", "sparrow", "cactus",
                 "ladybug", "fern", "kitten", "snail", "horse")
NONLIVING_THINGS = ("rock", "cloud", "toy car", "glass marble", "bicycle", "pebble", "spoon", "candle flame",
                    "plastic bottle", "wooden chair", "raindrop", "robot")
DRYING_ITEMS = ("towels", "T-shirts", "socks", "pairs of jeans", "swimsuits", "blankets", "pillowcases",
                "dish cloths", "sweaters", "bed sheets")
DROPPED_THINGS = ("tennis ball", "apple", "pencil", "shoe", "paper cup", "toy car", "key", "orange",
                  "spoon", "book", "rubber duck", "pine cone")
