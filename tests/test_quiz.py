"""Tests for courselib.quiz and the question bank book/question_bank/questions.yml."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from courselib.grading import quiz
from courselib.grading.cli import main

REPO = Path(__file__).resolve().parents[1]
BANK = REPO / "book" / "question_bank" / "questions.yml"


@pytest.fixture(scope="module")
def bank():
    return quiz.load_bank()


def _correct(q):
    return q["answer"]


def test_bank_is_valid_and_covers_every_chapter(bank):
    qs = bank["questions"]
    assert len({q["id"] for q in qs}) == len(qs)
    for chapter in bank["chapters"]:
        mine = [q for q in qs if q["chapter"] == chapter]
        assert len(mine) >= 5, chapter
        assert any(q["type"] == "numeric" for q in mine), chapter
        assert any(q["type"] != "numeric" for q in mine), chapter


def test_sections_exist_in_the_chapters(bank):
    for q in bank["questions"]:
        page = REPO / bank["chapters"][q["chapter"]]["page"]
        if not page.exists():
            pytest.skip(f"{page} not written yet")
        assert f"({q['section']})=" in page.read_text(encoding="utf-8"), (q["id"], q["section"])


def test_key_scores_full_marks_and_blank_scores_zero(bank):
    key = {q["id"]: _correct(q) for q in bank["questions"]}
    res = quiz.grade(key)
    assert res["score"] == res["total"] == len(bank["questions"]) and res["fraction"] == 1.0
    assert not res["feedback"]
    blank = quiz.grade({})
    assert blank["score"] == 0 and set(blank["feedback"]) == set(key)


def test_wrong_answers_score_zero(bank):
    wrong = {}
    for q in bank["questions"]:
        if q["type"] == "numeric":
            wrong[q["id"]] = q["answer"] + 10 * q.get("tolerance", 0) + 1
        elif q["type"] == "multiple_choice":
            wrong[q["id"]] = next(c for c in q["choices"] if c != q["answer"])
        else:
            wrong[q["id"]] = q["answer"][:-1] or [c for c in q["choices"] if c not in q["answer"]]
    assert quiz.grade(wrong)["score"] == 0


def test_per_chapter_grading(bank):
    key = {q["id"]: q["answer"] for q in bank["questions"] if q["chapter"] == "quantization"}
    res = quiz.grade(key, chapter="quantization")
    assert res["score"] == res["total"] == len(key)
    assert quiz.grade(key)["score"] == len(key)  # the other chapters count as unanswered


def test_response_formats():
    mc = {"type": "multiple_choice", "answer": "b", "choices": {"a": "x", "b": "y"}}
    assert quiz.check_answer(mc, "B") and quiz.check_answer(mc, " b) ") and quiz.check_answer(mc, ["b"])
    assert not quiz.check_answer(mc, "a") and not quiz.check_answer(mc, "a, b") and not quiz.check_answer(mc, None)
    ms = {"type": "multiple_select", "answer": ["a", "c"], "choices": {"a": 1, "b": 2, "c": 3}}
    assert quiz.check_answer(ms, "c, a") and quiz.check_answer(ms, ["A", "c"]) and quiz.check_answer(ms, "a c")
    assert not quiz.check_answer(ms, "a") and not quiz.check_answer(ms, "a, b, c")
    num = {"type": "numeric", "answer": 0.833, "tolerance": 0.002}
    assert quiz.check_answer(num, 0.8333) and quiz.check_answer(num, "0.834") and quiz.check_answer(num, 5 / 6)
    assert not quiz.check_answer(num, 0.84) and not quiz.check_answer(num, "abc")
    assert not quiz.check_answer(num, float("nan"))
    exact = {"type": "numeric", "answer": 804004, "tolerance": 0}
    assert quiz.check_answer(exact, "804004") and not quiz.check_answer(exact, 804005)
    with pytest.raises(quiz.AmbiguousNumber, match="804004 or 804.004"):  # 804004 or 804.004?
        quiz.check_answer(exact, "804,004")
    with pytest.raises(TypeError):
        quiz.check_answer(num, True)


def test_decimal_comma_and_thousands_separators():
    """A decimal comma is read as one ("0,7" is 0.7, not 7); a comma that could be either is sent back."""
    q = {"type": "numeric", "answer": 0.7, "tolerance": 0}
    for written in ("0,7", "0.7", " 0.70 ", "0,70", "+0,7", 0.7):
        assert quiz.check_answer(q, written), written
    assert not quiz.check_answer(q, "7") and not quiz.check_answer(q, "07")
    assert quiz.check_answer({"type": "numeric", "answer": 7, "tolerance": 0}, "7")
    assert quiz.parse_number("12,25") == 12.25 and quiz.parse_number("-0,5") == -0.5
    assert quiz.parse_number("0,700") == 0.7  # a thousands group never starts with 0
    # thousands separators where a comma cannot be a decimal comma
    assert quiz.parse_number("1,234,567") == 1234567 and quiz.parse_number("1,234.5") == 1234.5
    assert quiz.parse_number("1_000") == 1000
    # one comma, then exactly three digits: 1234 or 1.234? Neither is guessed.
    for written in ("1,234", "-1,234", " 804,004 "):
        with pytest.raises(quiz.AmbiguousNumber, match="ambiguous"):
            quiz.parse_number(written)
    for written in ("1,2,3", "1.234,5", "12,34.5", ",5", "5,", "abc"):
        with pytest.raises(ValueError):
            quiz.parse_number(written)
        assert not quiz.check_answer(q, written)


def test_ambiguous_answers_are_sent_back_unscored(tmp_path, capsys):
    qs = [q for q in quiz.load_questions() if q["type"] == "numeric" and q["answer"] == 1152]
    assert qs, "the bank's 1152 question is the example"
    qid = qs[0]["id"]
    res = quiz.grade({qid: "1,152"}, chapter=qs[0]["chapter"])
    assert not res["results"][qid] and "ambiguous" in res["invalid"][qid]
    assert res["feedback"][qid] == res["invalid"][qid]  # no explanation: the student answers again
    assert quiz.grade({qid: "1152"}, chapter=qs[0]["chapter"])["results"][qid]
    assert quiz.grade({qid: "1,152.0"}, chapter=qs[0]["chapter"])["results"][qid]
    answers = tmp_path / "answers.yml"
    answers.write_text(yaml.safe_dump({qid: "1,152"}), encoding="utf-8")
    assert main(["quiz", "grade", str(answers), "--chapter", qs[0]["chapter"]]) == 0
    assert f"UNREAD {qid}: ambiguous number '1,152'" in capsys.readouterr().out


def test_pages_state_the_number_format(bank):
    for chapter in bank["chapters"]:
        text = " ".join((BANK.parent / f"{chapter}.md").read_text(encoding="utf-8").split())
        assert " ".join(quiz.NUMBER_FORMAT.split()) in text, chapter
    # the format's examples are no question's answer
    answers = {q["answer"] for q in bank["questions"] if q["type"] == "numeric"}
    examples = {quiz.parse_number(x) for x in re.findall(r"`([-+0-9.,e]+)`", quiz.NUMBER_FORMAT) if x != "1,234"}
    assert examples and not examples & answers, examples & answers


def test_numeric_answers_are_recomputed():
    """The arithmetic behind the numeric answers, recomputed independently."""
    from courselib import quantization as Q

    answers = {q["id"]: q["answer"] for q in quiz.load_questions()}
    assert answers["why-hamming-small"] == bin(0b1011 ^ 0b0110).count("1")
    assert answers["codes-packed-bytes"] == len(np.packbits(np.zeros(100, np.uint8)))
    assert answers["codes-average-precision"] == pytest.approx((1 + 2 / 3) / 2, abs=0.001)
    assert answers["itq-loss-value"] == pytest.approx(np.sum((np.sign([0.5, -0.2]) - [0.5, -0.2]) ** 2))
    _, s, _ = Q.quantize_uniform(np.array([-1.0, 2.0]), 2)
    assert answers["quant-scale"] == pytest.approx(s)
    q, s, z = Q.quantize_uniform(np.array([-0.5, 1.0, 2.05]), 8)
    assert answers["quant-zero-point"] == z and answers["quant-q-value"] == q[1]
    _, s, _ = Q.quantize_uniform(np.array([0.0, 6.0]), 8, symmetric=True)
    assert answers["quant-symmetric-relu"] == pytest.approx(s, abs=0.0002)
    _, alpha = Q.xnor_binarize(np.array([[0.4, -0.2, 0.1, -0.1]]))
    assert answers["quant-xnor-alpha"] == pytest.approx(float(alpha[0, 0]))
    assert answers["bc-hard-sigmoid"] == pytest.approx(max(0, min(1, 1.1 / 2)))
    assert answers["bc-xnor-dot"] == 70 - 30
    assert answers["obd-saliency"] == pytest.approx(2 * 0.5**2 / 2)
    assert answers["obd-csr-bytes"] == 100_000 * 8 + 1001 * 4
    assert answers["filters-l1"] == pytest.approx(np.abs([0.5, -0.25, 0, -1]).sum())
    assert answers["filters-next-layer"] == 32 * 4 * 3 * 3
    assert answers["distill-temperature"] == pytest.approx(math.e / (math.e + 1), abs=0.002)
    # put-csr with float16 values and int16 indices: the largest nnz for which CSR is smaller than dense
    r = c = 1000
    nnz = max(n for n in range(400_000, 600_000) if n * (2 + 2) + (r + 1) * 2 < r * c * 2)
    assert answers["put-csr-break-even"] == pytest.approx(100 * (1 - nnz / (r * c)), abs=0.01)
    # the signed zero point of XNNPACK: the book's z minus 2^(b-1)
    _, _, z = Q.quantize_uniform(np.array([-1.0, 3.0]), 8)
    assert answers["deploy-signed-zero-point"] == z - 128


def test_pages_are_up_to_date(bank):
    for chapter in bank["chapters"]:
        page = BANK.parent / f"{chapter}.md"
        assert page.read_text(encoding="utf-8") == quiz.render_chapter(chapter), (
            f"{page} is stale: run `courselib quiz render`"
        )
        text = page.read_text(encoding="utf-8")
        n = sum(q["chapter"] == chapter for q in bank["questions"])
        assert text.count("```{exercise}") == n and "```{solution}" not in text, "the book's pages carry no answers"
        spaced = " ".join(text.split())
        leaked = [s for s, q in quiz.explanation_fragments().items() if s in spaced]
        assert not leaked, f"{page}: explanations on a published page: {leaked}"


def test_explanations_are_searchable(bank):
    """The scan of the student edition looks for these sentences: most questions must have one."""
    frags = quiz.explanation_fragments()
    assert len(set(frags.values())) >= len(bank["questions"]) // 2
    for sentence, qid in frags.items():
        q = next(q for q in bank["questions"] if q["id"] == qid)
        assert sentence in " ".join(q["explanation"].split()) and len(sentence) >= 40


def test_bad_banks_and_inputs(tmp_path):
    good = yaml.safe_load(BANK.read_text(encoding="utf-8"))

    def write(mutate):
        b = yaml.safe_load(yaml.safe_dump(good))
        mutate(b)
        p = tmp_path / "bank.yml"
        p.write_text(yaml.safe_dump(b), encoding="utf-8")
        return p

    with pytest.raises(ValueError, match="duplicate"):
        quiz.load_bank(write(lambda b: b["questions"].append(dict(b["questions"][0]))))
    with pytest.raises(ValueError, match="not among the choices"):
        quiz.load_bank(write(lambda b: b["questions"][1].update(answer="z")))
    with pytest.raises(ValueError, match="type"):
        quiz.load_bank(write(lambda b: b["questions"][0].update(type="essay")))
    with pytest.raises(ValueError, match="unknown chapter"):
        quiz.load_bank(write(lambda b: b["questions"][0].update(chapter="nope")))
    with pytest.raises(ValueError, match="unknown question"):
        quiz.grade({"no-such-question": "a"})
    with pytest.raises(ValueError, match="unknown chapter"):
        quiz.load_questions(chapter="nope")
    with pytest.raises(TypeError, match="mapping"):
        quiz.grade(["a", "b"])


def test_cli_grade_and_render(tmp_path, capsys):
    qs = quiz.load_questions(chapter="itq")
    answers = tmp_path / "answers.yml"
    answers.write_text(yaml.safe_dump({q["id"]: q["answer"] for q in qs}), encoding="utf-8")
    assert main(["quiz", "grade", str(answers), "--chapter", "itq"]) == 0
    out = capsys.readouterr().out
    assert f"score: {len(qs)}/{len(qs)}" in out
    written = quiz.write_pages(out_dir=tmp_path / "pages")
    assert {p.name for p in written} == {f"{c}.md" for c in quiz.load_bank()["chapters"]}
    assert re.search(r"\(qb-itq\)=", (tmp_path / "pages" / "itq.md").read_text(encoding="utf-8"))
    # the answer key: every answer and its explanation in a dropdown, never into the book's folder
    capsys.readouterr()
    assert main(["quiz", "render", "--answer-key", str(tmp_path / "key")]) == 0
    key = (tmp_path / "key" / "itq.md").read_text(encoding="utf-8")
    assert key.count("```{solution}") == len(qs) and all(
        " ".join(q["explanation"].split())[:30] in " ".join(key.split()) for q in qs
    )
    assert "Answer: **" in key and "never publish" in key
    with pytest.raises(ValueError, match="not be written into the book"):
        quiz.write_pages(answers=True)
