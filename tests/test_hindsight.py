"""Unit tests of hindsight.py on small sources: which statements were added
(``find_additions``), where they go in another recorded version (``place``), and
which loops a replay must run (``probed_loops``)."""

from __future__ import annotations

import ast

import pytest

from hindlog.hindsight import HINDSIGHT_CALL, HINDSIGHT_CALL_END, HINDSIGHT_ITER, HINDSIGHT_ITER_END, HINDSIGHT_PREFIX, PlacementError, find_additions, isolate_new_code, place, probed_loops
from replay_helpers import dedent

BASE = dedent("""
    import torch
    import hindlog as hl

    def train_step(model, opt, x, y):
        opt.zero_grad()
        loss = model(x).sub(y).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    def evaluate(model, data):
        total = 0.0
        for x, y in hl.loop("val", data):
            total += float(model(x).sub(y).abs().sum())
        return total

    for epoch in hl.loop("epoch", range(3)):
        for x, y in hl.loop("step", loader):
            loss = train_step(model, opt, x, y)
        sched.step()
        val = evaluate(model, val_data)
        hl.log("val", val)
""")


def lines_of(src: str, ranges: list[tuple[int, int]]) -> list[str]:
    lines = src.splitlines()
    return ["\n".join(lines[a - 1 : b]) for a, b in ranges]


def add_after(src: str, anchor: str, new: str) -> str:
    """``src`` with ``new`` (already indented) on the line after the first line containing ``anchor``."""
    lines = src.splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if anchor in line)
    return "".join(lines[: k + 1] + [new if new.endswith("\n") else new + "\n"] + lines[k + 1 :])


# ----------------------------------------------------------------- find_additions


def test_identical_sources_add_nothing() -> None:
    found = find_additions("train.py", BASE, BASE)
    assert found.statements == [] and found.other_changes == ""


def test_added_statements_are_found_at_every_level() -> None:
    new = add_after(BASE, 'hl.log("val", val)', '    hl.log("lr", sched.get_last_lr()[0])')
    new = add_after(new, "loss = train_step(model, opt, x, y)", '        hl.log("loss", loss.item())')
    new = add_after(new, "opt.step()", '    hl.log("gnorm", float(model.weight.grad.norm()))')
    found = find_additions("train.py", BASE, new)
    assert found.other_changes == ""
    assert lines_of(new, found.statements) == [
        '    hl.log("gnorm", float(model.weight.grad.norm()))',
        '        hl.log("loss", loss.item())',
        '    hl.log("lr", sched.get_last_lr()[0])',
    ]


def test_multi_line_and_compound_statements_are_one_statement_each() -> None:
    block = (
        "    if epoch % 2 == 0:\n"
        "        w = sum(\n"
        "            float(p.abs().sum()) for p in model.parameters()\n"
        "        )\n"
        "        hl.log('w', w)\n"
    )
    new = add_after(BASE, 'hl.log("val", val)', block)
    found = find_additions("train.py", BASE, new)
    assert found.other_changes == ""
    assert len(found.statements) == 1
    a, b = found.statements[0]
    assert b - a == 4 and new.splitlines()[a - 1].strip() == "if epoch % 2 == 0:"


def test_comments_and_blank_lines_are_not_statements() -> None:
    new = add_after(BASE, "sched.step()", "    # a comment\n\n    # another")
    found = find_additions("train.py", BASE, new)
    assert found.statements == [] and found.other_changes == ""


def test_a_changed_line_is_another_change_with_its_diff() -> None:
    new = BASE.replace("range(3)", "range(5)")
    new = add_after(new, 'hl.log("val", val)', '    hl.log("lr", 0.1)')
    found = find_additions("train.py", BASE, new)
    assert '-for epoch in hl.loop("epoch", range(3)):' in found.other_changes
    assert '+for epoch in hl.loop("epoch", range(5)):' in found.other_changes


def test_a_log_statement_next_to_a_changed_line_is_still_new_for_force() -> None:
    # The natural way to log a gradient norm: keep what clip_grad_norm_ returns (a changed
    # line), and log it on the next (a new statement, in the same diff hunk).
    new = BASE.replace("    opt.step()\n", "    gn = opt.step()\n    hl.log('gn', gn)\n    print(gn)\n")
    assert new != BASE
    found = find_additions("train.py", BASE, new)
    assert "-    opt.step()" in found.other_changes and "+    gn = opt.step()" in found.other_changes
    assert lines_of(new, found.statements) == ["    hl.log('gn', gn)", "    print(gn)"]


def test_a_removed_line_is_another_change() -> None:
    new = BASE.replace("    sched.step()\n", "")
    found = find_additions("train.py", BASE, new)
    assert found.statements == []
    assert "-    sched.step()" in found.other_changes


def test_an_added_line_inside_an_existing_statement_is_another_change() -> None:
    old = "x = f(\n    1,\n)\n"
    new = "x = f(\n    1,\n    2,\n)\n"
    found = find_additions("m.py", old, new)
    assert found.statements == []
    assert "not a whole new statement" in found.other_changes and "+    2," in found.other_changes


def test_a_new_else_branch_is_not_a_whole_statement() -> None:
    old = "if a:\n    b = 1\n"
    new = "if a:\n    b = 1\nelse:\n    b = 2\n"
    found = find_additions("m.py", old, new)
    assert "+else:" in found.other_changes


def test_an_added_statement_the_diff_aligns_off_by_a_repeated_line_is_found() -> None:
    # Black-formatted calls end in a lone ``)``: the diff may take the old statement's ``)`` as
    # the inserted one; a repeated header (``with torch.no_grad():``) the same the other way.
    old = "x = f(\n    1,\n)\ny = 2\nz = 3\nw = 4\n"
    new = "x = f(\n    1,\n)\nhl.log(\n    'x',\n    x,\n)\ny = 2\nz = 3\nw = 4\n"
    found = find_additions("m.py", old, new)
    assert found.other_changes == "" and lines_of(new, found.statements) == ["hl.log(\n    'x',\n    x,\n)"]
    old = "a = 1\nb = 2\nc = 3\nwith torch.no_grad():\n    d = 4\n"
    new = "a = 1\nb = 2\nc = 3\nwith torch.no_grad():\n    hl.log('c', c)\nwith torch.no_grad():\n    d = 4\n"
    found = find_additions("m.py", old, new)
    assert found.other_changes == "" and found.statements == [(4, 5)]


def test_a_new_decorated_function_is_one_statement_with_its_decorator() -> None:
    old = "import torch\nx = 1\n"
    new = "import torch\n\n@torch.no_grad()\ndef norm(m):\n    return 1.0\nx = 1\n"
    found = find_additions("m.py", old, new)
    assert found.other_changes == "" and found.statements == [(3, 5)]
    assert place(new, found.statements, "import torch\ny = 0\nx = 1\n").splitlines()[1:4] == [
        "@torch.no_grad()", "def norm(m):", "    return 1.0"]


def test_a_new_clause_written_on_its_header_line_is_not_a_new_statement() -> None:
    # ``elif b: hl.log(...)`` changes which branch runs: not an addition, whatever its body.
    old = "if a:\n    x = 1\nelse:\n    x = 2\n"
    new = "if a:\n    x = 1\nelif b: hl.log('b', 1)\nelse:\n    x = 2\n"
    found = find_additions("m.py", old, new)
    assert "+elif b: hl.log('b', 1)" in found.other_changes
    # A log statement on a changed line is still new for --force (it runs and its values are stored).
    found = find_additions("m.py", "for i in hl.loop('e', range(3)):\n    x = i * 2\n",
                           "for i in hl.loop('e', range(3)):\n    x = i * 2; hl.log('x', x)\n")
    assert found.statements == [(2, 2)] and "+    x = i * 2; hl.log('x', x)" in found.other_changes


def test_new_statements_sharing_a_line_are_new_together_when_the_second_spans_lines() -> None:
    old = "for e in range(3):\n    x = e\n    y = 2\n"
    new = "for e in range(3):\n    x = e\n    hl.log('a', x); hl.log('b',\n        f(x))\n    y = 2\n"
    found = find_additions("t.py", old, new)
    assert found.statements == [(3, 3), (3, 4)] and not found.other_changes
    # Placed into another version, they go together.
    placed = place(new, found.statements, "import os\nfor e in range(3):\n    z = 3\n    x = e\n    y = 2\n")
    assert placed == "import os\nfor e in range(3):\n    z = 3\n    x = e\n    hl.log('a', x); hl.log('b',\n        f(x))\n    y = 2\n"
    # The same where the diff could align the added lines one line early (a `x)` line repeats).
    old = "for e in range(3):\n    foo(x,\n        x)\n    y = 2\n    z = 3\n    w = 4\n"
    new = "for e in range(3):\n    foo(x,\n        x)\n    hl.log('a', x); hl.log('b',\n        x)\n    y = 2\n    z = 3\n    w = 4\n"
    found = find_additions("t.py", old, new)
    assert found.statements == [(4, 4), (4, 5)] and not found.other_changes
    # A recorded statement's line is still a change when a statement is added after it.
    found = find_additions("t.py", "for e in range(3):\n    x = e\n    y = 2\n", "for e in range(3):\n    x = e; hl.log('b',\n        x)\n    y = 2\n")
    assert "+    x = e; hl.log('b'," in found.other_changes


def test_place_refuses_a_block_the_recorded_version_writes_on_its_header_line() -> None:
    new = "for i in hl.loop('e', range(3)):\n    x = i\n    hl.log('x', x)\n"
    ranges = find_additions("t.py", "for i in hl.loop('e', range(3)):\n    x = i\n", new).statements
    with pytest.raises(PlacementError, match="on the line of its header"):
        place(new, ranges, "y = 0\nfor i in hl.loop('e', range(3)): x = i\n")


def test_a_source_that_does_not_parse_is_reported() -> None:
    new = BASE + "hl.log('x', (\n"
    found = find_additions("train.py", BASE, new)
    assert found.statements == [] and "does not parse" in found.syntax_error and found.other_changes == ""
    assert f"(line {len(new.splitlines())})" in found.syntax_error and "<unknown>" not in found.syntax_error
    # Also when the error is in a changed line (not something --force could replay).
    broken = BASE.replace("sched.step()", "sched.step(")
    assert "does not parse" in find_additions("train.py", BASE, broken).syntax_error


def test_a_comment_added_to_or_changed_on_a_line_changes_no_code() -> None:
    new = BASE.replace("sched.step()", "sched.step()  # once per epoch")
    new = add_after(new, 'hl.log("val", val)', '    hl.log("lr", 0.1)  # hindsight')
    found = find_additions("train.py", BASE, new)
    assert found.other_changes == "" and len(found.statements) == 1
    # A '#' inside a string is code, not a comment.
    assert find_additions("m.py", "x = 'a'\n", "x = 'a#b'\n").other_changes != ""


# ----------------------------------------------------------------- place


def placed_statements(target: str, placed: str) -> list[str]:
    """The statements ``placed`` adds to ``target`` (and nothing else changed)."""
    ast.parse(placed)
    found = find_additions("t.py", target, placed)
    assert found.other_changes == ""
    return [s.strip() for s in lines_of(placed, found.statements)]


def test_place_into_an_older_version_with_other_lines_added_and_removed() -> None:
    new = add_after(BASE, 'hl.log("val", val)', '    hl.log("lr", sched.get_last_lr()[0])')
    new = add_after(new, "loss = train_step(model, opt, x, y)", '        hl.log("loss", loss.item())')
    ranges = find_additions("train.py", BASE, new).statements
    # The older version: no scheduler, an extra line in the nested loop, a different helper.
    older = BASE.replace("    sched.step()\n", "")
    older = add_after(older, "loss = train_step(model, opt, x, y)", "        seen += 1")
    older = older.replace("        total += float(model(x).sub(y).abs().sum())\n", "        total += 1.0\n")
    placed = place(new, ranges, older)
    assert placed_statements(older, placed) == ['hl.log("loss", loss.item())', 'hl.log("lr", sched.get_last_lr()[0])']
    lines = placed.splitlines()
    k = lines.index('        hl.log("loss", loss.item())')
    assert lines[k - 1] == "        loss = train_step(model, opt, x, y)" and lines[k + 1] == "        seen += 1"
    assert lines[lines.index('    hl.log("lr", sched.get_last_lr()[0])') - 1] == '    hl.log("val", val)'


def test_place_at_the_start_of_a_block_and_inside_a_function() -> None:
    new = add_after(BASE, "def train_step(model, opt, x, y):", '    hl.log("batch", len(x))')
    new = add_after(new, "opt.step()", '    hl.log("after", 1)')
    ranges = find_additions("train.py", BASE, new).statements
    older = BASE.replace("        loss.backward()\n", "        loss.backward(retain_graph=False)\n")
    placed = place(new, ranges, older)
    lines = placed.splitlines()
    k = lines.index("def train_step(model, opt, x, y):")
    assert lines[k + 1] == '    hl.log("batch", len(x))' and lines[k + 2] == "    opt.zero_grad()"
    assert lines[lines.index('    hl.log("after", 1)') - 1] == "    opt.step()"


def test_place_reindents_to_the_target_and_keeps_multi_line_statements() -> None:
    new = add_after(BASE, 'hl.log("val", val)', "    hl.log(\n        'lr',\n        sched.get_last_lr()[0],\n    )")
    ranges = find_additions("train.py", BASE, new).statements
    two_spaces = BASE.replace("    ", "  ")
    placed = place(new, ranges, two_spaces)
    # The statement's first line takes the block's indentation; later lines keep theirs relative to it.
    assert "  hl.log(\n      'lr',\n      sched.get_last_lr()[0],\n  )\n" in placed
    assert placed_statements(two_spaces, placed) == ["hl.log(\n      'lr',\n      sched.get_last_lr()[0],\n  )"]


def test_place_leaves_the_lines_of_a_multi_line_string_as_written() -> None:
    old = "for e in range(3):\n    x = e\n    y = 2\n"
    new = 'for e in range(3):\n    x = e\n    hl.log("t", f"""a\n    {x}\nb""" + """\n    c""")\n    y = 2\n'
    placed = place(new, find_additions("t.py", old, new).statements, old.replace("    ", "  "))
    # Reindented, the string would lose two of its spaces: its value would change.
    assert placed == 'for e in range(3):\n  x = e\n  hl.log("t", f"""a\n    {x}\nb""" + """\n    c""")\n  y = 2\n'


def test_place_a_compound_statement_written_on_one_line() -> None:
    new = add_after(BASE, 'hl.log("val", val)', '    if epoch % 2 == 0: hl.log("even", val)')
    ranges = find_additions("train.py", BASE, new).statements
    older = BASE.replace("    sched.step()\n", "")
    placed = place(new, ranges, older)
    assert placed_statements(older, placed) == ['if epoch % 2 == 0: hl.log("even", val)']
    lines = placed.splitlines()
    assert lines[lines.index('    if epoch % 2 == 0: hl.log("even", val)') - 1] == '    hl.log("val", val)'


def test_place_refuses_an_ambiguous_or_missing_neighbour() -> None:
    new = add_after(BASE, 'hl.log("val", val)', '    hl.log("lr", 0.1)')
    ranges = find_additions("train.py", BASE, new).statements
    twice = BASE.replace('    hl.log("val", val)\n', '    hl.log("val", val)\n    x = 1\n    hl.log("val", val)\n    y = 2\n')
    with pytest.raises(PlacementError, match="2 places match"):
        place(new, ranges, twice)
    # Where one occurrence also has the statement's other neighbour (here: the block's end), it is that one.
    at_end = BASE.replace('    hl.log("val", val)\n', '    hl.log("val", val)\n    x = 1\n    hl.log("val", val)\n')
    assert place(new, ranges, at_end).endswith('    x = 1\n    hl.log("val", val)\n    hl.log("lr", 0.1)\n')
    without = BASE.replace('    hl.log("val", val)\n', '    hl.log("validation", val)\n')
    with pytest.raises(PlacementError, match="no place matches: this version of the code has no `hl.log\\('val', val\\)` there"):
        place(new, ranges, without)
    # The same neighbour in another loop does not count: the enclosing loop must match.
    renamed = BASE.replace('hl.loop("epoch", range(3))', 'hl.loop("round", range(3))')
    with pytest.raises(PlacementError):
        place(new, ranges, renamed)


def test_place_after_its_neighbour_when_the_older_version_has_a_line_between() -> None:
    new = add_after(BASE, "sched.step()", '    hl.log("lr", 0.1)')
    ranges = find_additions("train.py", BASE, new).statements
    older = BASE.replace("    sched.step()\n", "    sched.step()\n    print(epoch)\n")
    lines = place(new, ranges, older).splitlines()
    assert lines[lines.index('    hl.log("lr", 0.1)') - 1] == "    sched.step()"


def test_place_into_a_file_indented_with_tabs() -> None:
    base = 'import hindlog as hl\nfor e in hl.loop("epoch", range(3)):\n\tif e:\n\t\ta = 1\n'
    new = base.replace("\t\ta = 1\n", "\t\ta = 1\n\t\tif a:\n\t\t\thl.log('a', a)\n")
    placed = place(new, find_additions("t.py", base, new).statements, "x = 0\n" + base)
    assert placed == "x = 0\n" + new
    compile(placed, "t.py", "exec")


def test_place_inside_a_match_case() -> None:
    base = dedent("""
        import hindlog as hl
        for e in hl.loop("epoch", range(3)):
            match e:
                case 0:
                    a = 1
                case _:
                    a = 2
    """)
    new = base.replace("a = 1\n", "a = 1\n            hl.log('a', a)\n")
    placed = place(new, find_additions("t.py", base, new).statements, "x = 0\n" + base)
    assert placed == "x = 0\n" + new


def test_place_tells_handlers_and_cases_by_what_they_catch_not_by_position() -> None:
    v1 = dedent("""
        for i in hl.loop("step", range(9)):
            try:
                v = risky(i)
            except ZeroDivisionError:
                bad += 1
    """)
    v3 = v1.replace("    except ZeroDivisionError:\n", "    except OverflowError:\n        bad += 2\n    except ZeroDivisionError:\n")
    in_new = v3.replace("        bad += 2\n", "        hl.log('ovf', i)\n        bad += 2\n")
    with pytest.raises(PlacementError):
        place(in_new, find_additions("t.py", v3, in_new).statements, v1)
    in_old = v3.replace("        bad += 1\n", "        hl.log('zero', i)\n        bad += 1\n")
    placed = place(in_old, find_additions("t.py", v3, in_old).statements, v1)
    assert placed == v1.replace("        bad += 1\n", "        hl.log('zero', i)\n        bad += 1\n")
    cases = dedent("""
        match n:
            case n if n < 2:
                x = f(n)
            case _:
                x = 0
    """)
    more = cases.replace("    case _:\n", "    case n if n < 3:\n        x = g(n)\n    case _:\n")
    new = more.replace("        x = g(n)\n", "        x = g(n)\n        hl.log('x', x)\n")
    with pytest.raises(PlacementError):
        place(new, find_additions("t.py", more, new).statements, cases)


def test_place_refuses_a_neighbour_the_new_code_repeats_unless_the_next_statement_matches_too() -> None:
    v1 = "w = 1\nev = evaluate(w)\nsleep()\nhl.log('ev', ev)\n"
    v3 = "ev = evaluate(w)\nhl.log('ev_pre', ev)\nw = 1\nev = evaluate(w)\nsleep()\nhl.log('ev', ev)\n"
    first = v3.replace("ev = evaluate(w)\nhl.log('ev_pre'", "ev = evaluate(w)\nhl.log('h', ev)\nhl.log('ev_pre'", 1)
    with pytest.raises(PlacementError, match="no place matches"):
        place(first, find_additions("t.py", v3, first).statements, v1)
    second = v3.replace("ev = evaluate(w)\nsleep()", "ev = evaluate(w)\nhl.log('h', ev)\nsleep()")
    assert place(second, find_additions("t.py", v3, second).statements, v1) == "w = 1\nev = evaluate(w)\nhl.log('h', ev)\nsleep()\nhl.log('ev', ev)\n"


def test_place_refuses_a_neighbour_that_shares_its_line_in_the_recorded_version() -> None:
    new = "loss = f(w)\nhl.log('w0', w[0])\nw *= 0.5\n"
    ranges = find_additions("t.py", "loss = f(w)\nw *= 0.5\n", new).statements
    with pytest.raises(PlacementError, match="another statement on the same line"):
        place(new, ranges, "loss = f(w); w *= 0.5\n")


def test_place_leaves_out_statements_the_older_version_has_in_that_place_only() -> None:
    """A statement removed since and added back is not placed again where the older version has
    it (it would log each value twice); the same text elsewhere in the block is another statement."""
    older = "for e in range(3):\n    x = e\n    log('x', x)\n    log('double', 2 * x)\n    sleep()\n"
    base = "for e in range(3):\n    x = e\n    log('x', x)\n    sleep()\n"
    now = "for e in range(3):\n    x = e\n    log('x', x)\n    log('double', 2 * x)\n    log('triple', 3 * x)\n    sleep()\n"
    add = find_additions("t.py", base, now)
    assert place(now, add.statements, older) == now
    assert place(now, add.statements, older.replace("    log('double', 2 * x)\n", "")) == now
    # Its first statement right after one neighbour, its last right before the other: all there.
    base2, now2, older2 = "a()\nb()\n", "a()\nlog1()\nlog2()\nb()\n", "a()\nlog1()\nc()\nlog2()\nb()\n"
    assert place(now2, find_additions("t.py", base2, now2).statements, older2) == older2
    recorded = "v = 0\nfor e in range(3):\n    print('v', v)\n    v = v * 2 + 1\n"
    printed_after = recorded + "    print('v', v)\n"
    assert place(printed_after, find_additions("t.py", recorded, printed_after).statements, recorded) == printed_after


def test_place_into_the_same_version_gives_the_new_source() -> None:
    new = add_after(BASE, 'hl.log("val", val)', '    hl.log("lr", 0.1)')
    new = add_after(new, "sched.step()", '    hl.log("s", 2)')
    ranges = find_additions("train.py", BASE, new).statements
    assert place(new, ranges, BASE) == new


# ----------------------------------------------------------------- probed_loops


def probed(new: str, files: dict[str, str] | None = None, path: str = "train.py") -> set[str]:
    old = (files or {}).get(path, BASE)
    sources = {**(files or {}), path: new}
    ranges = find_additions(path, old, new).statements
    assert ranges
    return probed_loops(sources, {path: ranges})


def test_a_main_loop_statement_probes_no_nested_loop() -> None:
    assert probed(add_after(BASE, 'hl.log("val", val)', '    hl.log("lr", sched.get_last_lr()[0])')) == {"epoch"}


@pytest.mark.parametrize("imports, line, reads", [
    ("import torch", "hl.log('g', float(model.weight.grad.norm()))", True),
    ("import torch", "hl.log('g', float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)))", True),
    ("from torch.nn.utils import clip_grad_norm_ as clip", "hl.log('g', float(clip(model.parameters(), 1e9)))", True),
    ("from torch.nn.utils import clip_grad_norm_ as clip", "hl.log('w', float(model.weight.norm()))", False),
])
def test_a_new_statement_reads_gradients_through_grad_or_a_gradient_reader(imports: str, line: str, reads: bool) -> None:
    from hindlog.hindsight import reads_gradients

    old = f"{imports}\nfor epoch in hl.loop('epoch', range(3)):\n    train(model)\n"
    new = old + f"    {line}\n"
    assert reads_gradients({"t.py": new}, {"t.py": find_additions("t.py", old, new).statements}) is reads


@pytest.mark.parametrize("body, reads", [
    ("    train_one_epoch(model)\n    hl.log('g', float(model.weight.grad.norm()))\n", True),
    ("    for x in hl.loop('step', data):\n        model(x).backward()\n        clip_grad_norm_(model.parameters(), 1.0)\n", False),
    ("    train_one_epoch(model)\n", False),  # its clip_grad_norm_ is in its step loop
    ("    train_one_epoch(model)\n    report(model)\n", True),  # report reads .grad outside any loop
    ("    train_one_epoch(model)\n    if epoch % 2:\n        hl.log('g', total_norm(model))\n", True),
    # Gradients the main loop's own step computes, read after it: there whatever is skipped.
    ("    model(x).backward()\n    clip_grad_norm_(model.parameters(), 1.0)\n"
     "    for v in hl.loop('val', data):\n        model(v)\n", False),
    # sched.step() is no project optimizer's step(), which reads .grad; p.grad = None reads nothing.
    ("    train_one_epoch(model)\n    sched.step()\n    for p in model.parameters():\n        p.grad = None\n", False),
    # The step loop computes gradients through a function it calls, or through self.
    ("    for x in hl.loop('step', data):\n        train_step(x)\n    hl.log('g', float(model.weight.grad.norm()))\n", True),
    ("    trainer.train_epoch()\n    clip_grad_norm_(model.parameters(), 1.0)\n", False),  # no project function reached
])
def test_the_main_loops_own_code_reads_gradients_outside_its_nested_loops(body: str, reads: bool) -> None:
    from hindlog.hindsight import main_loop_reads_gradients

    src = dedent("""
        from torch.nn.utils import clip_grad_norm_
        import hindlog as hl

        def train_one_epoch(model):
            for x in hl.loop("step", data):
                model(x).backward()
                clip_grad_norm_(model.parameters(), 1.0)

        class Lion:
            def step(self):
                for p in params:
                    p.data -= p.grad.sign()

        def train_step(x):
            model(x).backward()

        def report(model):
            print(model.weight.grad.norm())

        def total_norm(model):
            return sum(p.grad.norm() for p in model.parameters())

        for epoch in hl.loop("epoch", range(3)):
    """) + body
    assert main_loop_reads_gradients({"t.py": src}, "epoch") is reads


@pytest.mark.parametrize("step_loop, carried", [
    # Gradient accumulation: cleared only every ACCUM steps, what the last steps leave goes on.
    ("    for k, x in enumerate(hl.loop('step', data)):\n        model(x).backward()\n"
     "        if (k + 1) % ACCUM == 0:\n            opt.step()\n            opt.zero_grad()\n", "step"),
    ("    for x in hl.loop('step', data):\n        opt.zero_grad()\n        model(x).backward()\n        opt.step()\n", None),
    ("    opt.zero_grad()\n    for k, x in enumerate(hl.loop('step', data)):\n        model(x).backward()\n"
     "        if (k + 1) % ACCUM == 0:\n            opt.step()\n", None),  # cleared before the loop, each iteration
    ("    for x in hl.loop('step', data):\n        loss = train_step(x)\n", None),  # train_step clears them
    # ... also called inside another call (a list of losses, a logged value).
    ("    for x in hl.loop('step', data):\n        losses.append(train_step(x))\n", None),
    ("    for x in hl.loop('step', data):\n        hl.log('td', train_step(x).item())\n", None),
    ("    for x in hl.loop('step', data):\n        model(x).backward()\n"
     "        for p in model.parameters():\n            p.grad = None\n", None),
    ("    for x in hl.loop('val', data):\n        total += model(x)\n", None),  # no backward at all
    # Micro-batches accumulated, then one step and an unconditional clear after the loop (nanoGPT).
    ("    for m in hl.loop('micro', range(4)):\n        model(x).backward()\n"
     "    opt.step()\n    opt.zero_grad(set_to_none=True)\n", None),
    # A function's loop, cleared by the caller before the call.
    ("    opt.zero_grad()\n    accumulate_epoch(data)\n", None),
    ("    accumulate_epoch(data)\n", "inner"),
    # A step-based main loop that accumulates its own steps.
    ("    model(x).backward()\n    if (epoch + 1) % ACCUM == 0:\n        opt.step()\n        opt.zero_grad()\n", "epoch"),
    ("    model(x).backward()\n    opt.step()\n    opt.zero_grad()\n", None),
    # A function that calls itself (walking a module's children) ends the analysis too.
    ("    for x in hl.loop('step', data):\n        walk(model)\n        model(x).backward()\n        opt.zero_grad()\n", None),
    # PyTorch's MNIST example: a plain loop in train() clears in every step; model.train() is no
    # call of the project's train().
    ("    model.train()\n    train(model, data)\n    sched.step()\n", None),
    ("    accumulate_plain(data)\n", "at t.py:"),
    # Steps only after a warm-up, each clearing before its backward: nothing goes on.
    ("    for i, x in enumerate(hl.loop('step', data)):\n        if i >= 5:\n            opt.zero_grad()\n"
     "            model(x).backward()\n            opt.step()\n", None),
    ("    if epoch >= 1:\n        opt.zero_grad()\n        model(x).backward()\n        opt.step()\n", None),
    # A backward before the clear in its block still carries.
    ("    for i, x in enumerate(hl.loop('step', data)):\n        if i >= 5:\n            model(x).backward()\n"
     "            opt.zero_grad()\n", "step"),
])
def test_gradients_that_one_main_loop_iteration_leaves_to_the_next_are_found(step_loop: str, carried: str | None) -> None:
    from hindlog.hindsight import gradients_carry_over

    src = dedent("""
        import hindlog as hl

        def train_step(x):
            opt.zero_grad()
            loss = model(x)
            loss.backward()
            opt.step()
            return loss

        def accumulate_epoch(data):
            for k, x in enumerate(hl.loop("inner", data)):
                model(x).backward()
                if (k + 1) % ACCUM == 0:
                    opt.step()
                    opt.zero_grad()

        def walk(m):
            for c in m.children():
                walk(c)

        def train(model, data):
            for x in data:
                opt.zero_grad()
                model(x).backward()
                opt.step()

        def accumulate_plain(data):
            for k, x in enumerate(data):
                model(x).backward()
                if k % 2:
                    opt.zero_grad()

        for epoch in hl.loop("epoch", range(3)):
    """) + step_loop
    # Another script's accumulating loop, never run by this one, counts for nothing.
    other = "import hindlog as hl\nfor k, x in enumerate(hl.loop('other', data)):\n    model(x).backward()\n" \
            "    if k % 2:\n        opt.zero_grad()\n"
    found = gradients_carry_over({"t.py": src, "finetune.py": other}, "epoch")
    assert found == carried or (carried and carried.startswith("at ") and found and found.startswith(carried)), found


@pytest.mark.parametrize("iterable", [
    'enumerate(hl.loop("step", loader))', 'tqdm(hl.loop("step", loader), total=n)',
    'zip(hl.loop("step", loader), range(n))', 'enumerate(iterable=hl.loop("step", loader))',
])
def test_a_loop_handed_to_another_iterable_is_named_by_its_hl_loop(iterable: str) -> None:
    old = f"for epoch in hl.loop('epoch', range(3)):\n    for k, b in {iterable}:\n        x = b\n"
    new = old + "        hl.log('x', x)\n"
    assert probed(new, {"train.py": old}) == {"epoch", "step"}


def test_a_statement_after_the_main_loop_probes_nothing() -> None:
    assert probed(BASE + 'hl.log("final", float(model.weight.sum()))\n') == set()


def test_a_nested_loop_statement_probes_its_loop_and_the_enclosing_ones() -> None:
    new = add_after(BASE, "loss = train_step(model, opt, x, y)", '        hl.log("loss", loss.item())')
    assert probed(new) == {"epoch", "step"}


def test_a_statement_in_a_function_probes_the_loops_that_call_it() -> None:
    new = add_after(BASE, "opt.step()", '    hl.log("gnorm", 1.0)')
    assert probed(new) == {"epoch", "step"}
    # In evaluate's loop: that loop runs, and evaluate's caller.
    new = add_after(BASE, "total += float(", '        hl.log("batch_total", total)')
    assert probed(new) == {"epoch", "val"}
    # In evaluate, after its loop: the loop is skipped (its checkpoint restores `total`).
    new = add_after(BASE, "        total += float(", '    hl.log("total", total)')
    assert probed(new) == {"epoch"}


def test_calls_are_followed_through_functions_and_modules() -> None:
    helper = dedent("""
        import hindlog as hl

        def norm(model):
            return float(model.weight.norm())

        def report(model):
            return norm(model)
    """)
    main = BASE.replace("        loss = train_step(model, opt, x, y)\n",
                        "        loss = train_step(model, opt, x, y)\n        report(model)\n")
    new_helper = helper.replace("def norm(model):\n", "def norm(model):\n    hl.log('n', 1)\n")
    files = {"train.py": main, "helpers.py": helper}
    assert probed(new_helper, files, path="helpers.py") == {"epoch", "step"}


def test_a_statement_in_forward_probes_the_loops_that_call_the_model() -> None:
    # ``model(x)`` runs ``forward`` without naming it.
    base = dedent("""
        import torch
        import hindlog as hl

        class Net(torch.nn.Module):
            def forward(self, x):
                h = x * 2
                return h

        model = Net()
        for epoch in hl.loop("epoch", range(3)):
            for x in hl.loop("prefetch", range(2)):
                pass
            for x in hl.loop("step", range(4)):
                out = model(x)
            for x in hl.loop("val", range(4)):
                out = model(x)
    """)
    new = base.replace("        h = x * 2\n", "        h = x * 2\n        hl.log('h', float(h))\n")
    assert probed(new, {"train.py": base}) == {"epoch", "step", "val"}


def test_a_statement_in_a_hook_probes_the_loops_that_may_run_it() -> None:
    base = dedent("""
        import hindlog as hl

        def on_output(module, inputs, output):
            return None

        model.register_forward_hook(on_output)
        for epoch in hl.loop("epoch", range(3)):
            for x in hl.loop("step", range(4)):
                out = model(x)
    """)
    new = base.replace("    return None\n", "    hl.log('out', float(output.sum()))\n    return None\n")
    assert probed(new, {"train.py": base}) == {"epoch", "step"}


def test_a_new_hook_or_lambda_probes_the_loops_that_may_run_it() -> None:
    base = dedent("""
        import hindlog as hl

        model = Net()
        for epoch in hl.loop("epoch", range(3)):
            for x in hl.loop("step", range(4)):
                out = model(x)
            for i in hl.loop("count", range(2)):
                n = i + 1
    """)
    hook = base.replace("model = Net()\n", "model = Net()\n\ndef on_output(m, i, o):\n    hl.log('o', o)\n\n"
                        "model.register_forward_hook(on_output)\n")
    assert probed(hook, {"train.py": base}) == {"epoch", "step"}
    lam = base.replace("model = Net()\n", "model = Net()\nmodel.register_forward_hook(lambda m, i, o: print(o))\n")
    assert probed(lam, {"train.py": base}) == {"epoch", "step"}


def test_a_statement_in_a_data_sets_getitem_probes_the_loops_reading_the_loader() -> None:
    base = dedent("""
        import hindlog as hl
        from torch.utils.data import DataLoader

        class Pairs:
            def __getitem__(self, i):
                x = i * 2
                return x

        loader = DataLoader(Pairs(), batch_size=4)
        for epoch in hl.loop("epoch", range(3)):
            for x in hl.loop("step", loader):
                y = x
            for i in hl.loop("count", range(2)):
                n = i + 1
    """)
    new = base.replace("        x = i * 2\n", "        x = i * 2\n        hl.log('x', x)\n")
    assert probed(new, {"train.py": base}) == {"epoch", "step"}


def test_a_statement_reading_an_undeclared_object_a_skipped_loop_changed() -> None:
    base = dedent("""
        import types
        import numpy as np
        import hindlog as hl

        tracker = types.SimpleNamespace(last=0.0)
        hl.checkpoints(model=model, opt=opt)
        for epoch in hl.loop("epoch", range(3)):
            for x in hl.loop("step", range(4)):
                opt.step()
                tracker.last = x
            for i in hl.loop("val", range(2)):
                model.eval()
    """)
    # No checkpoint holds ``tracker``: the loop that changes it must run ...
    new = base.replace("        model.eval()\n", "        model.eval()\n    hl.log('last', tracker.last)\n")
    assert probed(new, {"train.py": base}) == {"epoch", "step"}
    # ... while the declared objects the loops change are restored from their checkpoints, and
    # a module whose functions a loop calls (``hl.log``, ``np.random.shuffle``) is no state.
    logging = base.replace("        model.eval()\n", "        model.eval()\n        hl.log('x', np.random.shuffle(x))\n")
    new = logging.replace("        hl.log('x', np.random.shuffle(x))\n",
                          "        hl.log('x', np.random.shuffle(x))\n    hl.log('lr', opt.lr + model.w + np.pi)\n")
    assert probed(new, {"train.py": logging}) == {"epoch"}


def test_a_function_imported_under_another_name_is_followed() -> None:
    helper = "import hindlog as hl\n\ndef grad_norm(m):\n    return 1.0\n"
    main = dedent("""
        import hindlog as hl
        from helpers import grad_norm as gn
        for e in hl.loop("epoch", range(3)):
            for x in hl.loop("step", range(4)):
                g = gn(x)
            for x in hl.loop("val", range(4)):
                g = x
    """)
    new_helper = helper.replace("def grad_norm(m):\n", "def grad_norm(m):\n    hl.log('g', 1)\n")
    assert probed(new_helper, {"train.py": main, "helpers.py": helper}, path="helpers.py") == {"epoch", "step"}


def test_a_statement_reading_a_local_the_recorded_code_never_reads_after_the_loop() -> None:
    # `x` is assigned by the step loop and nothing after it reads it: its checkpoint does not
    # hold it, so the loop must run for the new statement to see the right value.
    new = add_after(BASE, "sched.step()", '    hl.log("last_x", float(x.sum()))')
    assert probed(new) == {"epoch", "step"}
    # The same for `loss`; but once the recorded code reads `loss` after the loop, the loop's
    # checkpoint holds it and the loop can be skipped.
    assert probed(add_after(BASE, "sched.step()", '    hl.log("l", float(loss))')) == {"epoch", "step"}
    reading = add_after(BASE, "sched.step()", "    last = loss")
    new = add_after(reading, "    last = loss", '    hl.log("last", float(loss))')
    assert probed(new, {"train.py": reading}) == {"epoch"}
    # Names bound inside the statement (a comprehension's target) are not read from loops.
    new = add_after(BASE, "sched.step()", '    hl.log("w", sum(float(x.sum()) for x in model.parameters()))')
    assert probed(new) == {"epoch"}
    # Nor are names the new statements assign before reading them.
    new = add_after(BASE, "sched.step()", "    x = model.weight\n    hl.log('wx', float(x.sum()))")
    assert probed(new) == {"epoch"}
    # Nor are names that recorded statements just before it, in its block, assign.
    assigning = add_after(BASE, "sched.step()", "    x = model.weight")
    new = add_after(assigning, "    x = model.weight", "    hl.log('wx2', float(x.sum()))")
    assert probed(new, {"train.py": assigning}) == {"epoch"}


def test_a_statement_in_a_function_reading_a_global_a_nested_loop_assigned() -> None:
    old = dedent("""
        import hindlog as hl

        def report(scale):
            pass

        for e in hl.loop("epoch", range(3)):
            for x in hl.loop("step", range(4)):
                out = x * 2
            for x in hl.loop("val", range(2)):
                scale = x
            report(1.0)
    """)
    # ``out`` is the step loop's (no checkpoint holds it); ``scale`` is report's own parameter.
    new = old.replace("    pass\n", "    pass\n    hl.log('o', out * scale)\n")
    assert probed(new, {"train.py": old}) == {"epoch", "step"}


def test_a_statement_reading_through_a_closure_or_a_called_function_what_a_loop_assigned() -> None:
    closure = dedent("""
        import hindlog as hl

        def main():
            def report():
                pass
            for e in hl.loop("epoch", range(3)):
                for x in hl.loop("step", range(4)):
                    out = x * 2
                report()
        main()
    """)
    new = closure.replace("        pass\n", "        pass\n        hl.log('o', out)\n")
    assert probed(new, {"train.py": closure}) == {"epoch", "step"}
    callee = dedent("""
        import hindlog as hl

        def summary():
            return out

        for e in hl.loop("epoch", range(3)):
            for x in hl.loop("step", range(4)):
                out = x * 2
            y = 1
    """)
    new = callee.replace("    y = 1\n", "    y = 1\n    hl.log('o', summary())\n")
    assert probed(new, {"train.py": callee}) == {"epoch", "step"}


def test_a_statement_in_a_nested_loop_reads_what_its_loop_just_assigned() -> None:
    # `h` is assigned by the val loop too (and nothing reads it after that loop), but the
    # statement in the step loop reads the `h` of its own step: the val loop need not run.
    inline = dedent("""
        for epoch in hl.loop("epoch", range(3)):
            for x, y in hl.loop("step", loader):
                h = model(x)
                loss = sum(h)
            for x, y in hl.loop("val", val_loader):
                h = model(x)
            hl.log("loss", float(loss))
    """)
    new = add_after(inline, "        loss = sum(h)", '        hl.log("h_mean", float(h.mean()))')
    assert probed(new, {"train.py": inline}) == {"epoch", "step"}
    # After the loops, `h` comes from a loop whose checkpoint does not keep it: the loops run.
    new = add_after(inline, '    hl.log("loss", float(loss))', '    hl.log("last_h", float(h.mean()))')
    assert probed(new, {"train.py": inline}) == {"epoch", "step", "val"}
    # Unless the statement assigns it first.
    new = add_after(inline, '    hl.log("loss", float(loss))', "    h = model(val_x)\n    hl.log('h2', float(h.mean()))")
    assert probed(new, {"train.py": inline}) == {"epoch"}


def test_a_statement_reading_its_own_loops_target_does_not_probe_a_sibling_loop() -> None:
    """``for x, y in train`` then ``for x, y in val``: a new statement in the val loop reading
    ``y`` reads the val loop's own ``y``, not the one the train loop left."""
    base = dedent("""
        import hindlog as hl

        for epoch in hl.loop("epoch", range(3)):
            for x, y in hl.loop("train", [(1, 2)]):
                w = x + y
            for x, y in hl.loop("val", [(3, 4)]):
                out = x * 2
    """)
    new = base.replace("        out = x * 2\n", "        out = x * 2\n        hl.log('q', y + out)\n")
    ranges = find_additions("train.py", base, new).statements
    assert probed_loops({"train.py": new}, {"train.py": ranges}) == {"epoch", "val"}
    # Reading w, which only the train loop assigns and nothing reads after it: train must run.
    new = base.replace("        out = x * 2\n", "        out = x * 2\n        hl.log('q', w)\n")
    ranges = find_additions("train.py", base, new).statements
    assert probed_loops({"train.py": new}, {"train.py": ranges}) == {"epoch", "val", "train"}


def test_new_statements_that_draw_random_numbers_are_found() -> None:
    from hindlog.hindsight import draws_random_numbers

    base = BASE
    for added, draws in [
        ('    hl.log("r", torch.rand(1).item())', True),
        ('    hl.log("r", rng.normal())', True),
        ('    hl.log("r", float(torch.empty(3).uniform_().sum()))', True),
        ('    hl.log("r", random.choices([1, 2], k=2))', True),
        ('    hl.log("n", float(np.linalg.norm([1.0])))', False),
        ('    hl.log("lr", sched.get_last_lr()[0])', False),
        # A generator of its own: the run's draws do not change.
        ('    hl.log("r", torch.randn(3, generator=g).sum().item())', False),
    ]:
        new = add_after(base, 'hl.log("val", val)', added)
        ranges = find_additions("train.py", base, new).statements
        assert draws_random_numbers({"train.py": new}, {"train.py": ranges}) is draws, added


def test_new_statements_writing_output_a_replay_does_not_store_are_told_apart() -> None:
    from hindlog.hindsight import writes_unstored_output

    for statement, unstored in [
        ('    log.info("val %f", val)', True),
        ('    sys.stdout.write(f"{val}\\n")', True),
        ('    print(val, file=sys.stderr)', True),
        ('    print(val)', False),
        ('    hl.log("v", val)', False),
    ]:
        new = add_after(BASE, 'hl.log("val", val)', statement)
        found = find_additions("train.py", BASE, new)
        assert len(found.statements) == 1, statement
        assert writes_unstored_output({"train.py": new}, {"train.py": found.statements}) is unstored, statement



# ----------------------------------------------------------------- new code leaves the generators alone

ISOLATED_OLD = """
import random
import hindlog as hl

def gen():
    yield 1

log = []
for epoch in range(3):
    x = random.random()
    log.append(x)
"""

ISOLATED_NEW = """
import random
import hindlog as hl

def gen():
    yield 1
    yield random.random()

log = []
for epoch in range(3):
    x = random.random()
    log.append(x)
    import math
    hl.log("r", random.random()); hl.log("s", random.random())
    hl.log("m",
           random.random())
    hl.log("x", x)
    for ü in [random.random() for _ in range(2)]:
        hl.log("u", ü)
    for v in 1, 2:
        hl.log("v", v)
    if epoch:
        hl.log("e", random.random())
    draws = []
    for _ in range(3):
        draws.append(random.random())
    hl.log("draws", draws)
"""


def _isolated() -> tuple[str, str]:
    src = dedent(ISOLATED_NEW)
    added = find_additions("t.py", dedent(ISOLATED_OLD), src)
    assert added.statements and not added.other_changes
    return src, isolate_new_code(src, added.statements)


def test_new_code_is_wrapped_so_that_it_sets_the_generators_back_and_no_line_moves() -> None:
    src, out = _isolated()
    old_lines, new_lines = src.split("\n"), out.split("\n")
    assert len(old_lines) == len(new_lines)
    by_text = {a.strip(): b for a, b in zip(old_lines, new_lines) if a != b}
    # One `with` a line (two statements share it), at the statement's own indentation.
    assert by_text['hl.log("r", random.random()); hl.log("s", random.random())'] == \
        "    " + HINDSIGHT_PREFIX + 'hl.log("r", random.random()); hl.log("s", random.random())'
    assert by_text['hl.log("m",'] == "    " + HINDSIGHT_PREFIX + 'hl.log("m",'  # a statement over two lines: its first
    # A new for loop reads its iterable through the wrapper, placed by byte columns after a non-ASCII name.
    assert by_text["for ü in [random.random() for _ in range(2)]:"] == \
        "    for ü in " + HINDSIGHT_ITER + "[random.random() for _ in range(2)]" + HINDSIGHT_ITER_END + ":"
    assert by_text["for v in 1, 2:"] == "    for v in " + HINDSIGHT_ITER + "1, 2" + HINDSIGHT_ITER_END + ":"
    assert by_text['hl.log("e", random.random())'] == "        " + HINDSIGHT_PREFIX + 'hl.log("e", random.random())'
    # Left alone: recorded lines, an import, a statement that yields, statements that cannot draw.
    assert set(by_text) == {
        'hl.log("r", random.random()); hl.log("s", random.random())', 'hl.log("m",', 'hl.log("e", random.random())',
        "for ü in [random.random() for _ in range(2)]:", "for v in 1, 2:", "for _ in range(3):",
        "draws.append(random.random())"}
    ast.parse(out)


def test_a_new_statement_after_another_on_its_line_has_its_value_computed_in_isolation() -> None:
    """A ``with`` cannot follow ``if c:``, ``a;`` or a backslash: the value is computed through
    a lambda instead, and the statement stays where it is."""
    old = "for epoch in range(3):\n    x = epoch\n"
    added = ("    if epoch: hl.log('x', f(x))\n    with lock: v = evaluate(x)\n"
             "    if x: \\\n        g()\n    z = 1; \\\n    y = f()\n    if epoch: hl.log('y', x.item())\n")
    new = old + added
    ranges = find_additions("t.py", old, new).statements
    assert ranges
    out = isolate_new_code(new, ranges)
    ast.parse(out)
    call = lambda text: HINDSIGHT_CALL + text + HINDSIGHT_CALL_END  # noqa: E731
    first = call("hl.log('x', f(x))")
    assert out == old + (f"    if epoch: {first}\n    with lock: v = {call('evaluate(x)')}\n"
                         f"    if x: \\\n        {call('g()')}\n    z = 1; \\\n    y = {call('f()')}\n"
                         "    if epoch: hl.log('y', x.item())\n")  # the last cannot draw
    assert HINDSIGHT_PREFIX not in out


@pytest.mark.parametrize("line", [
    "class C:\n        if f(): x = g()",  # in a class body a lambda would not see the body's names
    "if c: y = (z := f())",  # := would bind in the lambda
    "if c: s = super().f()",
    "if c: print(locals())",
])
def test_a_value_whose_meaning_a_lambda_would_change_is_left_as_it_is(line: str) -> None:
    old = "def f(c):\n    x = 1\n"
    new = old + f"    {line}\n"
    out = isolate_new_code(new, find_additions("t.py", old, new).statements)
    assert out == new


def test_an_async_comprehension_is_not_put_in_a_lambda() -> None:
    old = "async def f(g, c):\n    x = 1\n"
    new = old + "    if c: y = [a async for a in g()]\n    while {a async for a in g()}:\n        pass\n"
    out = isolate_new_code(new, find_additions("t.py", old, new).statements)
    assert out == new  # a lambda cannot hold it: the copy would not compile
    compile(out, "t.py", "exec")


def test_recorded_code_on_the_line_of_a_forced_new_log_statement_is_not_isolated() -> None:
    """``--force`` replays a print added to a recorded line: the recorded statements there draw
    the run's numbers as recorded."""
    import random

    old = "import random\nlog = []\nfor epoch in range(4):\n    if random.random() < 2: x = random.random()\n    log.append(random.random())\n"
    new = old.replace("x = random.random()", "x = random.random(); print(random.random())")
    found = find_additions("t.py", old, new)
    assert found.statements == [(4, 4)] and found.shared_lines == [4] and found.other_changes
    out = isolate_new_code(new, found.statements, found.shared_lines)
    assert out.split("\n")[3] == f"    if random.random() < 2: x = random.random(); {HINDSIGHT_CALL}print(random.random()){HINDSIGHT_CALL_END}"

    def run(code: str) -> list[float]:
        random.seed(5)
        scope: dict = {"print": lambda *a: None}
        exec(compile(code, "t.py", "exec"), scope)
        return scope["log"]

    assert run(out) == run(old)


def test_the_test_of_a_new_if_or_while_is_computed_in_isolation() -> None:
    old = "def f(rng):\n    x = 1\n"
    new = old + "    if rng.normal() > 0:\n        pass\n    while x < 2 and g():\n        x += 1\n    if x > 1:\n        pass\n"
    out = isolate_new_code(new, find_additions("t.py", old, new).statements)
    assert out.split("\n")[2:] == [
        f"    if {HINDSIGHT_CALL}rng.normal() > 0{HINDSIGHT_CALL_END}:", "        pass",
        f"    while {HINDSIGHT_CALL}x < 2 and g(){HINDSIGHT_CALL_END}:", "        x += 1",
        "    if x > 1:", "        pass", ""]  # a test that calls nothing is left alone


def test_one_line_new_statements_leave_the_runs_draws_as_recorded() -> None:
    """``if epoch % 2 == 0: hl.log(...)`` and a new ``if`` whose test draws: the run draws as
    recorded after them, and new code draws the numbers that fork_rng around it would give."""
    import random

    old = "import random\nlog, new = [], []\nfor epoch in range(4):\n    log.append(random.random())\n"
    new_code = ("    if epoch % 2 == 0: new.append(random.random())\n"
                "    if random.random() > 2:\n        pass\n"
                "    for _ in range(2): new.append(random.random())\n")
    new = old + new_code
    out = isolate_new_code(new, find_additions("t.py", old, new).statements)

    def run(code: str) -> dict:
        random.seed(11)
        scope: dict = {}
        exec(compile(code, "t.py", "exec"), scope)
        return scope

    recorded = run(old)["log"]
    assert run(new)["log"] != recorded  # as written, new code moves the run's draws
    isolated = run(out)
    assert isolated["log"] == recorded
    # Ground truth: each iteration's new code run on a copy of the run's generator (fork_rng).
    random.seed(11)
    want = []
    for epoch in range(4):
        random.random()
        state = random.getstate()
        if epoch % 2 == 0:
            want.append(random.random())
        random.random()
        want += [random.random(), random.random()]
        random.setstate(state)
    assert isolated["new"] == want


@pytest.mark.parametrize("line, wrapped", [
    ("import random; y = random.random()", True),  # one with covers the line
    ('hl.log("a", 1); v = evaluate(val_loader)', True),  # the second may draw
    ('hl.log("n", len(list(val_loader)))', True),  # reading a loader draws its seed
    ('hl.log("loss", loss.item())', False),  # cannot draw
    ("global step", False),
])
def test_a_line_of_new_statements_is_wrapped_when_any_may_draw(line: str, wrapped: bool) -> None:
    old = "def f(loss, val_loader):\n    x = 1\n"
    new = old + f"    {line}\n"
    out = isolate_new_code(new, find_additions("t.py", old, new).statements)
    assert out.split("\n")[2] == "    " + (HINDSIGHT_PREFIX if wrapped else "") + line
    ast.parse(out)


def test_a_new_loop_over_an_awaited_iterable_is_left_as_it_is() -> None:
    old = "async def f(q):\n    x = 1\n"
    new = old + "    for v in await q.get():\n        print(v)\n"
    out = isolate_new_code(new, find_additions("t.py", old, new).statements)
    assert HINDSIGHT_ITER not in out
    ast.parse(out)


def test_a_new_loop_whose_iterable_raises_leaves_no_new_code_open() -> None:
    import random

    import hindlog.controller as controller

    old = "import random\nlog = []\nfor e in range(3):\n    log.append(random.random())\n"
    new = old + ("    try:\n        for v in [f()]:\n            pass\n    except NameError:\n        pass\n"
                 "    n = random.random()\n")
    out = isolate_new_code(new, find_additions("t.py", old, new).statements)
    random.seed(3)
    scope: dict = {}
    exec(compile(old, "t.py", "exec"), scope)
    recorded = scope["log"]
    random.seed(3)
    scope = {}
    exec(compile(out, "t.py", "exec"), scope)
    assert controller._new_code_depth == 0
    assert scope["log"] == recorded  # the statement after it is still isolated


def test_wrapped_new_code_runs_and_leaves_the_runs_draws_as_recorded() -> None:
    import random

    import hindlog as hl

    src, out = _isolated()
    logged: list[tuple[str, object]] = []

    def run(code: str) -> list[float]:
        random.seed(7)
        scope: dict = {"__name__": "isolated"}
        real = hl.log
        hl.log = lambda name, value: logged.append((name, value)) or value
        try:
            exec(compile(code, "t.py", "exec"), scope)
        finally:
            hl.log = real
        return scope["log"]

    recorded = run(dedent(ISOLATED_OLD))
    assert run(src) != recorded  # new code, as written, moves the run's draws
    logged.clear()
    assert run(out) == recorded  # wrapped, the run draws as recorded
    # New code draws from a stream of its own: what the run would have drawn next, then on
    # from there (a loop of draws gives different numbers, not one number three times).
    random.seed(7)
    random.random()
    assert [v for n, v in logged if n == "r"][0] == random.random()
    draws = [v for n, v in logged if n == "draws"]
    assert len(draws) == 3 and all(len(set(d)) == 3 for d in draws)


@pytest.mark.parametrize("before, inside, carried", [
    (["window = []"], ["window.append(acc)", 'hl.log("avg", sum(window[-3:]))'], ["window"]),
    (['history = {"acc": []}'], ['history["acc"].append(acc)', 'hl.log("n", len(history["acc"]))'], ["history"]),
    (["import heapq", "top = []"], ["heapq.heappush(top, -acc)", 'hl.log("best", -top[0])'], ["top"]),
    (["best = 0.0"], ['hl.log("best", best := max(best, acc))'], ["best"]),
    (["total = 0.0"], ["total += acc", 'hl.log("total", total)'], ["total"]),
    # Read only: nothing carried.
    (["scale = 3"], ['hl.log("scaled", scale * acc)', 'hl.log("scale", scale)'], []),
])
def test_new_state_carried_across_iterations_is_found(before: list[str], inside: list[str], carried: list[str]) -> None:
    from hindlog.hindsight import new_state_carried

    lines = ["import hindlog as hl", 'for epoch in hl.loop("epoch", range(10)):', "    acc = epoch * 0.1"]
    src = "\n".join(lines[:1] + before + lines[1:] + ["    " + s for s in inside]) + "\n"
    ranges = [(2, 1 + len(before)), (len(lines) + len(before) + 1, len(lines) + len(before) + len(inside))]
    assert new_state_carried({"train.py": src}, {"train.py": ranges}, "epoch") == carried
