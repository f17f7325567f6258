"""FactDetector: true facts per default pattern, questions, near-misses, config errors, long inputs."""

import timeit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from olm.facts import DetectorConfig, FactDetector, FactInfo, FactPattern, fill, relation_key

RELATIONS = [
    "sister", "brother", "mother", "father", "cousin", "aunt", "uncle", "son", "daughter", "partner",
    "friend", "best friend", "neighbour", "boss", "colleague", "teacher", "doctor", "dog", "cat",
]  # fmt: skip


@pytest.fixture(scope="module")
def detector() -> FactDetector:
    return FactDetector()


@pytest.mark.parametrize(
    "text, subject, relation, obj, pattern",
    [
        ("Zara is my sister.", "Zara", "relation", "sister", "x_is_my_y"),
        ("My sister is Zara.", "Zara", "relation", "sister", "my_y_is_x"),
        ("My sister's name is Zara.", "Zara", "relation", "sister", "my_ys_name_is_x"),
        ("I have a cat named Tom.", "Tom", "relation", "cat", "i_have_a_y_called_x"),
        ("Zara lives in Oslo.", "Zara", "lives_in", "Oslo", "lives_in"),
        ("Zara works as a nurse.", "Zara", "works_as", "nurse", "works_as"),
        ("Zara works as an engineer.", "Zara", "works_as", "engineer", "works_as"),
        ("Zara has a red bicycle.", "Zara", "has", "red bicycle", "has"),
        ("Zara likes chess.", "Zara", "likes", "chess", "likes"),
        ("Zara's favourite colour is blue.", "Zara", "favourite_colour", "blue", "favourite_colour"),
        ("Zara's favorite color is blue.", "Zara", "favourite_colour", "blue", "favourite_colour"),
        ("Zara's birthday is in May.", "Zara", "birthday", "May", "birthday"),
    ],
)
def test_each_default_pattern_on_canonical_statements(detector, text, subject, relation, obj, pattern):
    for variant in (text, text.rstrip(".")):  # the trailing "." is optional
        fact = detector.detect(variant)
        assert fact is not None, variant
        assert (fact.subject, fact.slot, fact.object, fact.pattern) == (subject, relation, obj, pattern)
        assert 0.0 <= fact.confidence <= 1.0
        assert variant[fact.span[0] : fact.span[1]].startswith(("Zara", "My", "I"))


@pytest.mark.parametrize(
    "text, subject, obj",
    [
        ("my dog is called Rex", "Rex", "dog"),
        ("my cat is named Luna.", "Luna", "cat"),
        ("my dog's name is Rex", "Rex", "dog"),
        ("Zara is my best friend.", "Zara", "best friend"),
        ("Anna Maria is my older sister.", "Anna Maria", "older sister"),
        ("My best friend is Anna Maria.", "Anna Maria", "best friend"),
        ("Oh, and Zara is my boss now.", "Zara", "boss"),
        ("Yesterday Zara is my neighbour, she said.", "Zara", "neighbour"),
        ("Zara’s my cousin.", "Zara", "cousin"),
        ("Zoë is my sister-in-law.", "Zoë", "sister-in-law"),
        ("O'Brien is my colleague.", "O'Brien", "colleague"),
    ],
)
def test_everyday_relation_variants(detector, text, subject, obj):
    fact = detector.detect(text)
    assert fact is not None, text
    assert (fact.subject, fact.slot, fact.object) == (subject, "relation", obj)
    assert fact.relation == obj  # the real relation word is stored, not the literal "relation"


@pytest.mark.parametrize("relation", RELATIONS)
def test_toy_world_relation_kinds_share_one_key_across_forms(detector, relation):
    forms = [f"Xiomara is my {relation}.", f"My {relation} is Xiomara.", f"My {relation}'s name is Xiomara."]
    facts = [detector.detect(form) for form in forms]
    assert all(f is not None for f in facts), forms
    assert {(f.subject, f.slot, f.object, f.relation) for f in facts} == {("Xiomara", "relation", relation, relation)}


@pytest.mark.parametrize(
    "text, obj",
    [
        ("Zara works as a nurse in Oslo.", "nurse"),
        ("Zara works as a software engineer at a bank.", "software engineer"),
        ("Zara likes chess and tennis.", "chess"),
        ("Zara's birthday is on the 3rd of June.", "3rd of June"),
        ("José lives in São Paulo.", "São Paulo"),
        ("Xiomara lives in New York City with Bob.", "New York City"),
    ],
)
def test_objects_stop_at_clause_boundaries(detector, text, obj):
    fact = detector.detect(text)
    assert fact is not None and fact.object == obj


@pytest.mark.parametrize(
    "text",
    [
        "Is Zara my sister?", "Who is my sister?", "Who is Zara?", "Where does Zara live?",
        "Is Zara my sister", "what does Zara like", "Zara is my sister?", "Do you know that Zara lives in Oslo?",
    ],
)  # fmt: skip
def test_questions_never_give_facts(detector, text):
    assert detector.is_question(text)
    assert detector.detect(text) is None
    assert detector.detect_all(text) == []


OBJECTS = {"relation": "sister", "lives_in": "Lisbon", "works_as": "pharmacist", "has": "red bicycle", "likes": "chess",
           "favourite_colour": "teal", "birthday": "October", "name": "Ilsabet", "works_at": "Brightwell Labs",
           "allergic_to": "peanuts", "from": "Porto", "age": "34", "favourite {relation}": "sushi",
           "speaks": "Portuguese", "plays": "chess", "studies": "medicine", "hobby": "painting",
           "dislikes": "jazz", "diet": "vegetarian", "birth_year": "1990"}  # fmt: skip


@pytest.mark.parametrize("pattern", DetectorConfig().patterns, ids=lambda p: p.name)
def test_each_pattern_detects_its_own_paraphrased_statements(detector, pattern):
    """Augmentation trains on a pattern's `statements` as what a person says: each, said by a person,
    is detected as the same fact (a person who says "My home is in Lisbon." states a fact too)."""
    kind = "relation" if pattern.relation == "{object}" else pattern.relation
    obj, subject = OBJECTS[kind], pattern.subject or "Zara Quell"
    relation = fill(kind, subject, obj, "food")  # an open relation ("favourite {relation}"): "favourite food"
    for template in pattern.statements:
        text = fill(template, subject, obj, relation)
        fact = detector.detect(text)
        assert fact is not None, text
        assert (fact.subject, fact.slot, fact.object) == (subject, relation, obj), (text, fact)


@pytest.mark.parametrize(
    "text",
    [
        "my sister is", "It is my turn", "It is my turn.", "This is my dog.", "Today is my birthday",
        "Zara is my sister's friend.", "My sister is Zara's friend.", "zara is my sister",
        "Zara is not my sister.", "Zara has been sick.", "Bob has a lot of friends.", "Zara likes it.",
        "Hello there, how nice.", "The weather is nice today.", "",
        "Zara is a genius.", "I'm a big fan.", "I'm a teacher's pet.", "I like the colour of the sky.",
        "Call me later.",
        "My employer is great.", "I have an allergy.", "Zara celebrates her birthday today.",
        "Since Mercury has crossed paths with Jupiter, your luck is falling.", "The Receipt of Proceeds has arrived.",
        "Zara has bought a car.", "Tom has lost his keys.", "I'm allergic to these things.",
    ],
)  # fmt: skip
def test_near_misses_do_not_fire(detector, text):
    assert not detector.is_question(text)
    assert detector.detect(text) is None, detector.detect(text)


def test_statements_are_not_questions(detector):
    assert not detector.is_question("Zara is my sister.")
    assert not detector.is_question("Island life is nice")  # "is" only as a whole first word


def test_update_keeps_the_memory_key(detector):
    a, b = detector.detect("Zara is my sister."), detector.detect("Zara is my friend.")
    assert (a.subject, a.slot) == (b.subject, b.slot)
    assert (a.object, b.object) == ("sister", "friend") and (a.relation, b.relation) == ("sister", "friend")


def test_question_templates(detector):
    assert detector.detect("My sister is Zara.").question() == "Who is Zara?"
    assert detector.detect("Zara lives in Oslo.").question() == "Where does Zara live?"
    assert detector.detect("Zara's birthday is in May.").question() == "When is Zara's birthday?"


def test_entity_methods():
    text = "Yesterday I heard that Zara lives in Oslo with Bob."
    methods = ("pattern", "capitalized", "both")
    ents = {m: FactDetector(DetectorConfig(entity_method=m)).detect(text).entities for m in methods}
    assert ents["pattern"] == ("Zara", "Oslo")
    assert ents["capitalized"] == ("Zara", "Oslo", "Bob")  # "Yesterday" and "I" are non-names
    assert ents["both"] == ("Zara", "Oslo", "Bob")
    nouns = FactDetector(DetectorConfig(entity_method="pattern")).detect("Zara works as a nurse.")
    assert nouns.entities == ("Zara",)  # lowercase objects are not entities


def test_confidence_formula_and_cap():
    plain = DetectorConfig(coverage_boost=0.0, entity_boost=0.0)
    assert FactDetector(plain).detect("Zara is my sister").confidence == pytest.approx(0.8)
    boosted = DetectorConfig(coverage_boost=0.1, entity_boost=0.05)
    # the match covers the whole message: 0.8 + 1.0·0.1 + 0.05
    assert FactDetector(boosted).detect("Zara is my sister").confidence == pytest.approx(0.95)
    long = FactDetector(boosted).detect("Zara is my sister, and we grew up together in a small town.")
    assert 0.85 < long.confidence < 0.95  # lower coverage, lower confidence
    assert FactDetector(DetectorConfig(coverage_boost=5.0)).detect("Zara is my sister").confidence == 1.0


def test_min_confidence_drops_weak_matches():
    regex = r"(?P<subject>{NAME}) is my (?P<object>{RELATION})"
    strict = [FactPattern("x_is_my_y", regex, "relation", "Who is {subject}?", confidence=0.5, min_confidence=0.9)]
    detector = FactDetector(DetectorConfig(patterns=strict, coverage_boost=0.1, entity_boost=0.0))
    assert detector.detect("Zara is my sister") is None  # 0.5 + 0.1 < 0.9
    assert FactDetector(DetectorConfig(patterns=strict, entity_boost=0.35)).detect("Zara is my sister") is not None


def test_best_of_several_matches_wins():
    detector = FactDetector()
    facts = detector.detect_all("Zara likes chess. Bob is my brother.")
    assert {f.pattern for f in facts} == {"likes", "x_is_my_y"}
    assert detector.detect("Zara likes chess. Bob is my brother.").pattern == "x_is_my_y"  # 0.8 base beats 0.7


def test_every_fact_of_a_message_most_confident_first():
    detector = FactDetector()
    text = "My name is Sam and I live in Lisbon."
    facts = detector.detect_many(text)
    assert [(f.relation, f.object) for f in facts] == [("lives_in", "Lisbon"), ("name", "Sam")]
    assert facts[0] == detector.detect(text)
    two = detector.detect_many("Zara is my sister. Bob is my brother.")  # one pattern, two matches
    assert [(f.subject, f.object) for f in two] == [("Zara", "sister"), ("Bob", "brother")]
    assert len(detector.detect_many("Zara is my sister. Zara is my cousin.")) == 1  # one memory key, one fact
    assert [f.object for f in detector.detect_many("Sam is my brother. Ann is my sister. Bo is my son. Al is my dad.")] == [
        "brother", "sister", "son"]  # max_facts = 3
    assert len(FactDetector(DetectorConfig(max_facts=1)).detect_many(text)) == 1
    assert detector.detect_many("My name is Sam and I live in Lisbon, where do you live?") == []  # a question
    assert detector.detect_many("Hello there.") == []


def test_overlapping_matches_give_one_fact():
    detector = FactDetector()
    facts = detector.detect_all("Zara's favourite colour is green.")
    assert len(facts) == 1  # the possessive is not also a relation or a "has"
    regex = r"(?P<subject>{NAME}) is my (?P<object>{RELATION})"
    both = [FactPattern("a", regex, "relation", "Who is {subject}?"),
            FactPattern("b", regex, "relation2", "Who is {subject}?", confidence=0.7)]  # fmt: skip
    detector = FactDetector(DetectorConfig(patterns=both))
    assert len(detector.detect_all("Zara is my sister.")) == 2
    assert [f.pattern for f in detector.detect_many("Zara is my sister.")] == ["a"]  # same span: the stronger


@pytest.mark.parametrize(
    "text, name", [("Hi! I'm Sam.", "Sam"), ("Hello, I am Ana Lima, nice to meet you.", "Ana Lima"),
                   ("That's settled. I'm Bob.", "Bob"), ("I'm Happy to help.", None), ("So I'm Bob.", None),
                   ("My name's Odalys.", "Odalys"), ("I go by Odalys.", "Odalys"), ("My name's not important.", None),
                   ("I go by bus.", None)]
)  # fmt: skip
def test_i_am_x_after_a_greeting_or_a_sentence(text, name):
    fact = FactDetector().detect(text)
    assert (fact.object if fact is not None and fact.relation == "name" else None) == name


@pytest.mark.parametrize(
    "text, facts",
    [("Zara is my sister and she lives in Rome.", [("Zara", "sister", "sister"), ("Zara", "lives_in", "Rome")]),
     ("Tom is my brother. He is 7 years old.", [("Tom", "brother", "brother"), ("Tom", "age", "7")]),
     ("Zara is my sister. Bob is my brother. He has a red kite.",  # the nearest named subject before it
      [("Zara", "sister", "sister"), ("Bob", "brother", "brother"), ("Bob", "has", "red kite")]),
     ("She lives in Rome.", []),  # no antecedent in the message: dropped
     ("I met Anna in Paris. She lives in Rome.", []),  # a name, but no fact about it: dropped, not guessed
     ("My sister Zara lives in Rome.", [("Zara", "lives_in", "Rome"), ("Zara", "sister", "sister")]),
     ("My sister, Zara, works as a nurse.", [("Zara", "sister", "sister")]),
     ("My dog Rex has a red ball.", [("Rex", "has", "red ball"), ("Rex", "dog", "dog")]),
     ("Zara, my sister, lives in Rome.", [("Zara", "lives_in", "Rome"), ("Zara", "sister", "sister")]),
     ("Well, Mark, my husband, works at IBM.", [("Mark", "works_at", "IBM"), ("Mark", "husband", "husband")]),
     ("Rex, my dog, is 7 years old. He loves bones.",
      [("Rex", "age", "7"), ("Rex", "likes", "bones"), ("Rex", "dog", "dog")]),
     ("Zara, my sister, is coming over tonight.", [("Zara", "sister", "sister")]),
     ("Listen, my friend, you are wrong.", []), ("Look, my friend, this is hard.", []),  # an address, not a fact
     ("Thank you, my friend, that helps.", []), ("In Rome, my sister, works hard.", [])],
)  # fmt: skip
def test_pronouns_and_appositions_name_their_subject(text, facts):
    assert [(f.subject, f.relation, f.object) for f in FactDetector().detect_many(text)] == facts


def test_a_pronoun_with_no_person_before_it_in_the_message_is_the_antecedent():
    detector = FactDetector()
    assert [(f.subject, f.object) for f in detector.detect_many("She lives in Rome.", "Zara")] == [("Zara", "Rome")]
    assert detector.detect_many("She lives in Rome.") == []
    both = detector.detect_many("Bob is my brother and he has a red kite.", "Zara")  # the message's own person first
    assert [(f.subject, f.object) for f in both] == [("Bob", "brother"), ("Bob", "red kite")]
    assert detector.detect_many("Where does she live?", "Zara") == []  # a question stays a question


@pytest.mark.parametrize(
    "text, fact, question",
    [("My favourite food is sushi.", ("me", "favourite food", "sushi"), "What is my favourite food?"),
     ("My favorite TV show is Breaking Bad!", ("me", "favourite TV show", "Breaking Bad"), "What is my favourite TV show?"),
     ("My favourite time of year is autumn.", ("me", "favourite time of year", "autumn"), "What is my favourite time of year?"),
     ("My favourite number is 7.", ("me", "favourite number", "7"), "What is my favourite number?"),
     ("Zara's favourite band is Queen.", ("Zara", "favourite band", "Queen"), "What is Zara's favourite band?"),
     ("My favourite colour is green.", ("me", "favourite_colour", "green"), "What is my favourite colour?"),  # its own
     ("I'm 34 years old.", ("me", "age", "34"), "How old am I?"),
     ("My age is 41.", ("me", "age", "41"), "How old am I?"),
     ("Tom is 7 years old.", ("Tom", "age", "7"), "How old is Tom?"),
     ("My favourite thing is the ending.", None, None), ("My favourite part: the music.", None, None),
     ("I am 5 minutes late.", None, None), ("I am 34.", None, None)],
)  # fmt: skip
def test_open_favourites_and_ages(text, fact, question):
    found = FactDetector().detect(text)
    assert (None if found is None else (found.subject, found.relation, found.object)) == fact
    assert (None if found is None else found.question()) == question


@pytest.mark.parametrize(
    "text, fact",
    [("I was born in May.", ("me", "birthday", "May")),
     ("I was born on the 3rd of May.", ("me", "birthday", "3rd of May")),
     ("Zara was born in June.", ("Zara", "birthday", "June")), ("I was born in Lisbon.", ("me", "from", "Lisbon")),
     ("I was born in 1990.", ("me", "birth_year", "1990")), ("My birth year is 1985.", ("me", "birth_year", "1985")),
     ("Zara was born in 2001.", ("Zara", "birth_year", "2001")), ("I was born in May 1990.", ("me", "birthday", "May")),
     ("I was born in 1990s Lisbon.", None), ("I was born in 19901.", None),
     ("I was born in the Netherlands.", ("me", "from", "Netherlands")),
     ("I moved to Berlin last year.", ("me", "lives_in", "Berlin")),
     ("I've moved to Oslo.", ("me", "lives_in", "Oslo")),
     ("I've just moved to Oslo.", ("me", "lives_in", "Oslo")),
     ("I'm based in Berlin.", ("me", "lives_in", "Berlin")), ("I live in the UK.", ("me", "lives_in", "UK")),
     ("My birthday is May 3.", ("me", "birthday", "May 3")), ("Zara's birthday is June.", ("Zara", "birthday", "June")),
     ("My birthday is tomorrow.", None), ("I moved to a new flat.", None),
     ("I'm based in a small town.", None),
     ("Zara moved to Tallinn.", ("Zara", "lives_in", "Tallinn")),
     ("Zara has just moved to Tallinn.", ("Zara", "lives_in", "Tallinn")),
     ("Zara is based in Tallinn.", ("Zara", "lives_in", "Tallinn")),
     ("My sister moved to Rome.", ("my sister", "lives_in", "Rome")),
     ("The meeting moved to Monday.", None), ("Everyone moved to London.", None), ("It moved to Paris.", None)],
)  # fmt: skip
def test_birth_moves_and_bases_say_where_and_when(text, fact):
    """Being born (a month: the birthday; a year: the birth year, "What year was I born?"; a place: where one is
    from), moving to a place and being based there (where one lives) are the keys asked about already ("When is my
    birthday?", "Where am I from?", "Where do I live?"); a birthday may be said without "in" / "on"."""
    found = FactDetector().detect(text)
    assert (None if found is None else (found.subject, found.slot, found.object)) == fact


@pytest.mark.parametrize(
    "text, fact",
    [("Tom works at Google.", ("Tom", "works_at", "Google")), ("Tom works for the BBC.", ("Tom", "works_at", "BBC")),
     ("Zara's employer is Nexora.", ("Zara", "works_at", "Nexora")),
     ("I work at the Louvre.", ("me", "works_at", "Louvre")),
     ("Tom is from Canada.", ("Tom", "from", "Canada")), ("Tom comes from Peru.", ("Tom", "from", "Peru")),
     ("Tom was born in Madrid.", ("Tom", "from", "Madrid")), ("Tom was born in May.", ("Tom", "birthday", "May")),
     ("Anna grew up in Texas.", ("Anna", "from", "Texas")), ("I grew up in Ohio.", ("me", "from", "Ohio")),
     ("Bob works at night.", None), ("The email is from Google.", None), ("This is from Amazon.", None),
     ("Someone works for Google.", None), ("Tom is from the future.", None),
     ("Corwin Ashby is employed at Siemens.", ("Corwin Ashby", "works_at", "Siemens")),
     ("Tom is employed by the BBC.", ("Tom", "works_at", "BBC")), ("Tom is working for Google.", ("Tom", "works_at", "Google")),
     ("I'm employed by Siemens.", ("me", "works_at", "Siemens")), ("I am working at Nexora.", ("me", "works_at", "Nexora")),
     ("I'm working on Python.", None), ("Tom is working hard.", None)],
)  # fmt: skip
def test_where_a_person_works_and_comes_from(text, fact):
    """The third person has the employer and the origin that the speaker has ("I work at ...", "I'm from ..."),
    under the same memory keys; being born in a month stays a birthday."""
    found = FactDetector().detect(text)
    assert (None if found is None else (found.subject, found.slot, found.object)) == fact


@pytest.mark.parametrize(
    "text, fact",
    [("I'm a nurse.", ("me", "works_as", "nurse")),
     ("I am a software engineer.", ("me", "works_as", "software engineer")),
     ("I'm a retired teacher.", ("me", "works_as", "retired teacher")),
     ("Tom is a doctor.", ("Tom", "works_as", "doctor")),
     ("I'm a doctor, not a lawyer.", ("me", "works_as", "doctor")),
     ("I'm a big fan of yours.", None), ("I'm a bit tired.", None), ("Tom is a genius.", None),
     ("I'm not a doctor.", None), ("I'm a student of life.", None), ("It's a student discount.", None)],
)  # fmt: skip
def test_a_known_job_after_a_is_what_one_does_for_work(text, fact):
    """"I'm a nurse." says what the speaker does for work when the word is a known job (`detector.occupations`);
    "I'm a big fan." and "Tom is a genius." say nothing to remember."""
    found = FactDetector().detect(text)
    assert (None if found is None else (found.subject, found.slot, found.object)) == fact


@pytest.mark.parametrize(
    "text, fact",
    [("I love sushi.", "sushi"), ("I really enjoy hiking in the mountains.", "hiking"),
     ("I like sports very much.", "sports"), ("Oh, I love apple pie too.", "apple pie"),
     ("I like hot food, especially Sichuan cuisine.", "hot food"), ("I like tennis better.", "tennis"),
     ("I like it.", None), ("I love you!", None), ("I like how you think.", None), ("I'd like to know.", None),
     ("I would like a coffee.", None), ("I like the font and colour.", None), ("I love my dog.", None),
     ("I like watching it for the fashion.", None), ("I like D.H. Lawrence's novels.", None),
     ("I enjoy very much.", None), ("Do I like tea?", None)],
)  # fmt: skip
def test_what_the_speaker_likes(text, fact):
    """"I love sushi." is a fact about the speaker (asked "What do I like?"); a trailing "very much" or "too" is not
    part of the object; what one likes in the moment ("the font", "it", "you") and "I'd like to" are chat."""
    found = FactDetector().detect(text)
    assert (found.subject, found.slot, found.object) == ("me", "likes", fact) if fact else found is None


@pytest.mark.parametrize(
    "text, fact",
    [("Actually, I hate jazz now.", ("me", "dislikes", "jazz")),
     ("I can't stand opera any more.", ("me", "dislikes", "opera")),
     ("I don't like olives anymore.", ("me", "dislikes", "olives")),
     ("I love chess these days.", ("me", "likes", "chess")),
     ("I really like hiking a lot lately.", ("me", "likes", "hiking")),
     ("I enjoy pottery again.", ("me", "likes", "pottery")),
     ("Tom really enjoys jazz.", ("Tom", "likes", "jazz")), ("Tom likes opera a lot.", ("Tom", "likes", "opera")),
     ("Tom loves chess too.", ("Tom", "likes", "chess")),
     ("Tom just hates karaoke now.", ("Tom", "dislikes", "karaoke")),
     ("Tom doesn't like jazz anymore.", ("Tom", "dislikes", "jazz")), ("I don't like it now.", None),
     ("Tom likes it now.", None)],
)  # fmt: skip
def test_a_degree_or_a_time_after_a_like_or_a_dislike_is_not_its_object(text, fact):
    """"I hate jazz now." contradicts "I love jazz." only if its object is "jazz", not "jazz now": a degree or a
    time ("a lot", "any more", "these days", up to two) ends a like or a dislike, first or third person."""
    found = FactDetector().detect(text)
    assert (None if found is None else (found.subject, found.slot, found.object)) == fact


@pytest.mark.parametrize(
    "text, fact",
    [("I speak French.", ("speaks", "French")), ("I'm fluent in Mandarin.", ("speaks", "Mandarin")),
     ("I speak French and Spanish.", ("speaks", "French")), ("I speak to him daily.", None),
     ("I play the guitar.", ("plays", "guitar")), ("I play tennis every week.", ("plays", "tennis")),
     ("I play with my kids.", None), ("I play it safe.", None), ("I play a role here.", None),
     ("I study medicine at Oxford.", ("studies", "medicine")), ("I'm majoring in physics.", ("studies", "physics")),
     ("I'm studying hard.", None), ("I study in the library.", None), ("I'm studying the docs.", None),
     ("My hobby is painting.", ("hobby", "painting")), ("My favourite hobby is hiking in the woods.", ("hobby", "hiking")),
     ("I have a question.", None)],
)  # fmt: skip
def test_languages_games_studies_and_hobbies_of_the_speaker(text, fact):
    """"I speak French.", "I play the guitar.", "I study medicine.", "My hobby is painting." are facts about the
    speaker, each its own key ("What language do I speak?", "What do I play?", ...); near misses are chat."""
    found = FactDetector().detect(text)
    assert (found.subject, found.slot, found.object) == ("me", *fact) if fact else found is None


@pytest.mark.parametrize(
    "text, fact",
    [("I hate mushrooms.", ("dislikes", "mushrooms")), ("I don't like museums.", ("dislikes", "museums")),
     ("I really don't like cilantro.", ("dislikes", "cilantro")), ("I can't stand waiting.", ("dislikes", "waiting")),
     ("I don't like coffee at all.", ("dislikes", "coffee")),
     ("I don't enjoy cooking that much.", ("dislikes", "cooking")),
     ("I hate it when people are late.", None),
     ("I hate to say this.", None), ("I don't like the way he talks.", None), ("I can't stand him.", None),
     ("I don't like to drink.", None), ("I hate that.", None), ("Do I hate jazz?", None),
     ("I'm vegetarian.", ("diet", "vegetarian")), ("I am a vegan, so no cheese.", ("diet", "vegan")),
     ("I'm on a keto diet.", ("diet", "keto")), ("I follow a pescatarian diet.", ("diet", "pescatarian")),
     ("I'm a vegan chef.", ("works_as", "vegan chef")), ("I'm vegetarian food's fan.", None),
     ("I'm originally from Brazil.", ("from", "Brazil")), ("I was raised in Texas.", ("from", "Texas")),
     ("My hometown is Porto.", ("from", "Porto")), ("I'm originally from the north.", None),
     ("I'm learning Japanese.", ("studies", "Japanese")), ("I'm learning a lot.", None),
     ("I'm learning how to cook.", None), ("I'm learning from my mistakes.", None), ("I'm learning the ropes.", None),
     ("I live in a small flat in Leeds.", ("lives_in", "Leeds")),
     ("I moved to a suburb of Chicago.", ("lives_in", "Chicago")),
     ("I live in a tiny village near York.", None), ("I live in a house.", None)],
)  # fmt: skip
def test_dislikes_diets_origins_and_what_the_speaker_learns(text, fact):
    """"I hate mushrooms." (asked "What do I dislike?"), "I'm vegetarian." ("What is my diet?"), "I'm originally
    from Brazil.", "My hometown is Porto." ("Where am I from?"), "I'm learning Japanese." ("What do I study?"), "I live
    in a small flat in Leeds." (the dwelling before the place) are facts about the speaker; what one dislikes in the
    moment ("it when ...", "to say", "him") is chat."""
    found = FactDetector().detect(text)
    assert (found.subject, found.slot, found.object) == ("me", *fact) if fact else found is None


@pytest.mark.parametrize(
    "text, fact",
    [("Tom hates olives.", ("Tom", "dislikes", "olives")),
     ("Zara doesn't like museums.", ("Zara", "dislikes", "museums")),
     ("Tom is vegetarian.", ("Tom", "diet", "vegetarian")), ("Zara is on a keto diet.", ("Zara", "diet", "keto")),
     ("My mom is a vegan.", ("my mom", "diet", "vegan")), ("Tom is originally from Chile.", ("Tom", "from", "Chile")),
     ("Tom lives in a big house in Rome.", ("Tom", "lives_in", "Rome")),
     ("Tom hates it when it rains.", None), ("Tom hates me.", None), ("Tom doesn't like to wait.", None)],
)  # fmt: skip
def test_what_others_dislike_and_eat(text, fact):
    """The third-person forms: "Tom hates olives." ("What does Tom dislike?"), "Tom is vegetarian." ("What is
    Tom's diet?"), "Tom is originally from Chile."."""
    found = FactDetector().detect(text)
    assert (found.subject, found.slot, found.object) == fact if fact else found is None


@pytest.mark.parametrize(
    "text, fact",
    [("I'm married to Chris.", ("Chris", "spouse")), ("I am happily married to Anna Lee.", ("Anna Lee", "spouse")),
     ("I got engaged to Sam last week.", ("Sam", "fiancé")), ("I'm married to my job.", None),
     ("I'm married to Chris's sister.", None)],
)  # fmt: skip
def test_the_person_the_speaker_is_married_to(text, fact):
    """"I'm married to Chris." is "Chris is my spouse." (`FactPattern.object`: a fixed object, the regex has no
    ``object`` group); a pattern with neither the group nor a fixed object is a config error."""
    found = FactDetector().detect(text)
    assert (found.subject, found.slot, found.object, found.relation) == (fact[0], "relation", fact[1], fact[1]) \
        if fact else found is None
    with pytest.raises(ValueError, match="lacks named groups"):
        DetectorConfig(patterns=[FactPattern("wed", r"\bwed\s+(?P<subject>{NAME})", "{object}", "Who is {subject}?")])
    DetectorConfig(patterns=[FactPattern("wed", r"\bwed\s+(?P<subject>{NAME})", "{object}", "Who?", object="spouse")])


def test_a_name_then_and_is_still_a_name():
    facts = FactDetector().detect_many("Hi, I'm Sam and I'm a nurse.")
    assert sorted((f.slot, f.object) for f in facts) == [("name", "Sam"), ("works_as", "nurse")]


@pytest.mark.parametrize(
    "text, facts",
    [("My mom lives in Lyon.", [("my mom", "lives_in", "Lyon")]),
     ("my mum lives in Leeds", [("my mum", "lives_in", "Leeds")]),
     ("My dad is a doctor.", [("my dad", "works_as", "doctor")]),
     ("My older brother has a boat.", [("my older brother", "has", "boat")]),
     ("My sister's birthday is in May.", [("my sister", "birthday", "May")]),
     ("My mom lives in Lyon. She works at IBM.", [("my mom", "lives_in", "Lyon"), ("my mom", "works_at", "IBM")]),
     ("My sister Zara lives in Rome.", [("Zara", "lives_in", "Rome"), ("Zara", "relation", "sister")]),  # named
     ("My friend has been sick.", []), ("My dog loves it.", []), ("My kids love pizza.", [])],
)  # fmt: skip
def test_the_speakers_unnamed_relative_is_a_subject(text, facts):
    """"My mom lives in Lyon." is a fact about "my mom" (asked "Where does my mom live?"); a name, when
    given, stays the subject."""
    assert [(f.subject, f.slot, f.object) for f in FactDetector().detect_many(text)] == facts


def test_an_unnamed_relative_is_my_in_questions_and_your_in_answers():
    """Questions and statements are the speaker's words, answers the assistant's: "Where does my mom
    live?" → "Your mom lives in Lyon.". A name is the same in both."""
    detector = FactDetector()
    fact = detector.detect("My mom lives in Lyon.")
    pattern = detector.pattern(fact.pattern)
    assert fact.question() == "Where does my mom live?"
    assert fill(pattern.answer, fact.subject, fact.object, listener=True) == "Your mom lives in Lyon."
    assert fill(pattern.statements[0], fact.subject, fact.object) == "My mom lives in Lyon."
    assert fill(pattern.answer, "Zara", "Rome", listener=True) == "Zara lives in Rome."


def test_relation_synonyms_name_the_same_relative():
    """"my mother" and "my mum" are one relative to `relation_key` (routing's `unknown_relatives`); a modifier or
    capitals do not matter, other relations stay apart; a word in two groups, or an empty group, is an error."""
    key = relation_key(DetectorConfig())
    assert key("mother") == key("Mum") == key("older mom") == key("mommy")
    assert key("grandma") == key("granny") != key("mother")
    assert key("older sister") == key("sister") != key("brother") and key("boss") == "boss"
    assert FactDetector().detect("My granny lives in Leeds.").subject == "my granny"
    assert relation_key(DetectorConfig(relation_synonyms=[]))("mum") == "mum"
    with pytest.raises(ValueError, match="one group only"):
        DetectorConfig(relation_synonyms=[["mother", "mom"], ["mom", "ma"]])
    with pytest.raises(ValueError, match="relation_synonyms"):
        DetectorConfig(relation_synonyms=[["mother", " "]])
    with pytest.raises(ValueError, match="relation_synonyms"):
        DetectorConfig(relation_synonyms=[[]])


def test_an_open_relation_is_its_own_memory_key():
    """"My favourite food is sushi." and "My favourite film is Alien." are two facts; "My favorite food is
    ramen." later replaces the first (the spelling of favourite does not make a new key)."""
    detector = FactDetector()
    food, film, again = (detector.detect(t) for t in ("My favourite food is sushi.", "My favourite film is Alien.",
                                                      "My favorite food is ramen."))  # fmt: skip
    assert food.slot != film.slot and food.slot == again.slot == "favourite food"


def test_max_facts_is_validated():
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_facts"):
            DetectorConfig(max_facts=bad)


def test_input_is_truncated_before_matching():
    detector = FactDetector(DetectorConfig(max_chars=50))
    assert detector.detect("x" * 60 + " Zara is my sister.") is None
    assert detector.detect("Zara is my sister." + "x" * 100).span == (0, 17)


def test_config_errors_are_collected_into_one_message():
    bad = [
        FactPattern("broken", r"(?P<subject>{NAME}", "relation", "Who is {subject}?"),
        FactPattern("no_groups", r"{NAME} is here", "relation", "Who?"),
        FactPattern("bad_template", r"(?P<subject>{NAME}) (?P<object>x)", "relation", "Who is {name}?"),
    ]
    with pytest.raises(ValueError) as err:
        DetectorConfig(patterns=bad)
    msg = str(err.value)
    for part in ("'broken'", "not a valid regex", "'no_groups'", "lacks named groups", "'bad_template'"):
        assert part in msg
    with pytest.raises(ValueError) as err:
        DetectorConfig(entity_method="names", max_chars=0, capitalized_regex="(")
    msg = str(err.value)
    assert "entity_method" in msg and "max_chars" in msg and "capitalized_regex" in msg
    with pytest.raises(ValueError, match="min_confidence"):
        FactPattern("p", "x", "r", "q", min_confidence=1.5)


WORDS = ["Zara", "Anna Maria", "is", "my", "sister", "lives in", "Oslo", "'s", ".", "?", "likes", "a", "It", "she", "I", "am",
         "34", "years old", "favourite", "food", ":", "and"]
DEFAULT = FactDetector()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=12), st.text(max_size=30))
def test_any_input_gives_a_consistent_fact_or_none(words, noise):
    detector = DEFAULT
    text = " ".join(words) + noise
    fact = detector.detect(text)
    if fact is not None:
        start, end = fact.span
        if fact.pattern == "x_my_y":  # an apposition, looked at, not matched: "Zara, my sister, lives in ..."
            assert start == end and text[start:].startswith(fact.subject + ",") and fact.object in text[start:]
            return
        assert fact.object in text[start:end]  # the subject may lie outside: "my sister Zara", "she" resolved
        said = text.casefold()  # "My sister lives in Oslo.": subject "my sister"
        subject = fact.subject.casefold()
        named = subject in (said[start:end] if fact.pattern != "my_y_x" else said[end:]) or subject in said[:start]
        assert named or DEFAULT.pattern(fact.pattern).subject == fact.subject  # or a fixed subject ("me")
        assert 0.0 <= fact.confidence <= 1.0 and not detector.is_question(text)


def test_fact_info_is_frozen(detector):
    fact = detector.detect("Zara is my sister.")
    assert isinstance(fact, FactInfo)
    with pytest.raises(AttributeError):
        fact.subject = "Bob"


ADVERSARIAL = {
    "a": "a" * 100_000,
    "A": "A" * 100_000,
    "names": "Zara " * 20_000,
    "my": "my " * 30_000 + "!",
    "x_is_my": "Zara is my " * 9_000,
    "spaces": "Zara" + " " * 100_000 + "x",
    "possessive": "Zara's " * 14_000,
    "long_phrase": "Zara likes " + "a " * 45_000 + "A",
    "long_place": "Zara lives in " + "Oslo " * 19_000 + "x",
    "long_name": "My sister is " + "Anna " * 19_000 + "'s",
    "caps": "Ab " * 33_000,
    "apostrophes": "Zara'" * 25_000,
    "months": "Zara's birthday is in " + "May " * 20_000,
    "hyphens": "Aa-Bb'" * 16_000,
    "by_trade": "Zara is a " + "b " * 45_000 + "by trade",
    "colour_best": "Zara likes the colour " * 5_000 + "teal",
    "call_me": "Call me " * 12_000 + "Zara",
    "sentences": ". I'm " * 16_000 + "Zara",
    "greetings": "Hi! " * 25_000 + "I'm Zara",
    "many_facts": "Zara is my sister. " * 5_000,
    "favourites": "My favourite " * 8_000 + "x",
    "favourite_words": "My favourite " + "a " * 45_000 + "is",
    "pronouns": "Zara is my sister and she lives in " * 3_000,
    "appositions": "my sister " * 10_000 + "Zara",
    "ages": "I am 3 " * 14_000 + "years old",
    "born": "I was born in " * 7_000 + "May",
    "moved": "I moved to " * 9_000 + "x",
    "has_just_moved": "Zara" + " has just recently" * 6_000 + " moved to x",
    "employed": "Zara is employed by " * 6_000 + "x",
    "appositions_comma": "Zara, my sister, " * 6_000 + "lives in Rome",
    "works_at": "Zara works at " * 7_000 + "x",
    "grew_up": "Zara grew up in " * 6_000 + "x",
    "jobs": "I'm a " + "nice " * 20_000 + "nurse",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_no_catastrophic_backtracking(name):
    detector = FactDetector(DetectorConfig(max_chars=200_000))  # no truncation: the regexes themselves
    text = ADVERSARIAL[name][:100_000]
    for pattern, regex in detector.compiled:
        assert best_of_3(lambda: regex.search(text)) < 0.5, (pattern.name, name)
    assert best_of_3(lambda: detector.entities(text)) < 0.5  # linear: ~16 ms at 100k chars
    assert best_of_3(lambda: FactDetector().detect(ADVERSARIAL[name])) < 0.1  # default truncation bounds the work
    assert best_of_3(lambda: FactDetector().detect_many(ADVERSARIAL[name])) < 0.1


def best_of_3(fn) -> float:
    """Fastest of 3 timings: a scheduling hiccup on a loaded machine (one CI run saw 0.74 s for a 16 ms call)
    does not fail the test, catastrophic backtracking (every run slow) still does."""
    return min(timeit.repeat(fn, number=1, repeat=3))


def test_the_bundled_about_me_stream_states_six_facts_about_the_speaker_three_times_each(detector):
    """olm/assets/logs/about-me.jsonl (README, "Facts about the speaker"): every statement of it is detected."""
    import json
    from collections import Counter
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "olm" / "assets" / "logs" / "about-me.jsonl"
    said = [json.loads(line)["messages"][0]["content"] for line in path.read_text(encoding="utf-8").splitlines()]
    facts = [f for f in map(detector.detect, said) if f is not None]
    assert {f.subject for f in facts} == {"me"}
    assert Counter((f.slot, f.object) for f in facts) == {
        ("name", "Ilsabet"): 3, ("lives_in", "Tromsø"): 3, ("works_at", "Brightwell Labs"): 3,
        ("allergic_to", "sesame"): 3, ("favourite_colour", "mauve"): 3, ("birthday", "November"): 3,
    }  # fmt: skip
