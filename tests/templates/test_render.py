"""The Handlebars subset of SES templates: output, errors and bounds."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta import templates
from mta.templates import TemplateError, compile_template, parse_data, render


def html(template: str, data: object) -> str | None:
    return render(None, None, template, json.dumps(data)).html


def text(template: str, data: object) -> str | None:
    return render(None, template, None, json.dumps(data)).text


def error(template: str, data: object = None) -> tuple[str, str]:
    with pytest.raises(TemplateError) as excinfo:
        html(template, {} if data is None else data)
    return excinfo.value.code, excinfo.value.message


def test_variables_are_escaped_in_html_only():
    data = {"name": '<b>Tom & "Jerry"</b>\'`='}
    out = render("Hi {{name}}", "Hi {{name}}", "Hi {{name}}", json.dumps(data))
    assert out.subject == 'Hi <b>Tom & "Jerry"</b>\'`='
    assert out.text == 'Hi <b>Tom & "Jerry"</b>\'`='
    assert out.html == (
        "Hi &lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt;&#x27;&#x60;&#x3D;"
    )


def test_triple_stash_and_ampersand_are_not_escaped():
    assert html("{{{x}}} {{&x}}", {"x": "<i>"}) == "<i> <i>"


def test_nested_attributes():
    data = {"contact": {"first": "Anaya", "address": {"city": "Bengaluru"}}}
    assert (
        html("{{contact.first}} of {{contact.address.city}}", data)
        == "Anaya of Bengaluru"
    )
    assert html("{{contact/address/city}} {{contact.[first]}}", data) == (
        "Bengaluru Anaya"
    )


def test_values_print_as_javascript_would():
    data = {"t": True, "f": False, "n": None, "i": 3, "x": 2.0, "y": 0.5, "l": [1, "a"]}
    assert html("{{t}} {{f}} [{{n}}] {{i}} {{x}} {{y}} {{l}} {{l.length}}", data) == (
        "true false [] 3 2 0.5 1,a 2"
    )
    assert html("{{o}}", {"o": {"a": 1}}) == "[object Object]"


def test_if_else_and_unless():
    template = "{{#if vip}}VIP{{else}}regular{{/if}}/{{#unless vip}}no{{/unless}}"
    assert html(template, {"vip": True}) == "VIP/"
    for falsy in (False, None, 0, "", []):
        assert html(template, {"vip": falsy}) == "regular/no"
    assert html(template, {}) == "regular/no"
    assert html(template, {"vip": {}}) == "VIP/"


def test_else_if_chains():
    template = "{{#if a}}A{{else if b}}B{{else unless c}}C{{else}}D{{/if}}"
    assert html(template, {"a": 1}) == "A"
    assert html(template, {"b": 1}) == "B"
    assert html(template, {}) == "C"
    assert html(template, {"c": 1}) == "D"


def test_each_over_a_list_with_index_first_and_last():
    template = (
        "{{#each items}}{{@index}}:{{this}}{{#if @last}}.{{else}},{{/if}}{{/each}}"
    )
    assert html(template, {"items": ["a", "b", "c"]}) == "0:a,1:b,2:c."


def test_each_over_objects_and_parent_access():
    data = {
        "shop": "S",
        "prices": {"apple": 1, "pear": 2},
        "people": [{"name": "Ann"}, {"name": "Bo"}],
    }
    assert html("{{#each prices}}{{@key}}={{this}};{{/each}}", data) == (
        "apple=1;pear=2;"
    )
    assert html("{{#each people}}{{name}}@{{../shop}} {{/each}}", data) == (
        "Ann@S Bo@S "
    )
    assert html("{{#each people}}{{@root.shop}}{{/each}}", data) == "SS"


def test_each_else_when_empty_or_missing():
    template = "{{#each items}}x{{else}}none{{/each}}"
    assert html(template, {"items": []}) == "none"
    assert html(template, {"items": {}}) == "none"
    assert html(template, {}) == "none"


def test_with_and_inline_partials():
    data = {"user": {"name": "Kim"}}
    assert html("{{#with user}}{{name}}{{/with}}", data) == "Kim"
    template = '{{#*inline "greet"}}Hello {{name}}!{{/inline}}{{#with user}}{{> greet}}{{/with}}'
    assert html(template, data) == "Hello Kim!"


def test_standalone_block_lines_leave_no_blank_lines():
    template = "<ul>\n  {{#each items}}\n  <li>{{this}}</li>\n  {{/each}}\n</ul>\n"
    assert html(template, {"items": ["a", "b"]}) == (
        "<ul>\n  <li>a</li>\n  <li>b</li>\n</ul>\n"
    )


def test_whitespace_control_and_comments():
    assert html("a  {{~x~}}  b{{! note }}{{!-- {{y}} --}}", {"x": "X"}) == "aXb"
    assert html("\\{{x}}", {}) == "{{x}}"


def test_missing_attribute_is_an_error():
    assert error("Hi {{name}}") == (
        "MissingRenderingAttribute",
        "Attribute 'name' is not present in the rendering data.",
    )
    assert error("{{a.b}}", {"a": {}})[1] == (
        "Attribute 'a.b' is not present in the rendering data."
    )
    assert error("{{#each l}}{{name}}{{/each}}", {"l": [{}]})[0] == (
        "MissingRenderingAttribute"
    )


def test_null_is_present():
    assert html("[{{a}}]", {"a": None}) == "[]"


def test_bad_data_is_an_invalid_rendering_parameter():
    for data in ("{nope", "[1, 2]", '"text"', '{"a": NaN}', "[" * 5000 + "]" * 5000):
        with pytest.raises(TemplateError) as excinfo:
            render(None, "x", None, data)
        assert excinfo.value.code == "InvalidRenderingParameter"
    deep = "{" + '"a":{' * 100 + "}" * 101
    with pytest.raises(TemplateError):
        parse_data(deep)


@pytest.mark.parametrize(
    "template",
    [
        "{{#if a}}open",
        "{{#if a}}x{{/each}}",
        "{{/if}}",
        "{{else}}",
        "{{#if}}x{{/if}}",
        "{{name",
        "{{}}",
        "{{#if a}}{{else}}{{else}}{{/if}}",
        "{{> missing}}",
        "{{a..b}}",
    ],
)
def test_syntax_errors_are_invalid_template(template):
    code, message = error(template)
    assert code == "InvalidTemplate"
    assert message


@pytest.mark.parametrize(
    "template",
    [
        "{{uppercase name}}",
        "{{#each items as |item|}}{{/each}}",
        "{{#if a includeZero=true}}{{/if}}",
        "{{#custom a}}{{/custom}}",
        "{{lookup a b}}",
        '{{"literal"}}',
        "{{^a}}x{{/a}}",
        "{{#> layout}}{{/layout}}",
        "{{> p context}}",
    ],
)
def test_unsupported_operations(template):
    assert error(template) == ("InvalidTemplate", templates.UNSUPPORTED)


def test_syntax_errors_name_the_part_and_line():
    with pytest.raises(TemplateError) as excinfo:
        compile_template("ok", "line 1\nline 2 {{#if x}}", None)
    assert excinfo.value.message == (
        "TextPart has a syntax error on line 2: {{#if}} is never closed."
    )


def test_recursion_is_bounded():
    template = '{{#*inline "p"}}{{> p}}{{/inline}}{{> p}}'
    code, _ = error(template)
    assert code == "InvalidTemplate"
    nested = "{{#if a}}" * (templates.MAX_NESTING + 1)
    assert error(nested)[0] == "InvalidTemplate"


def test_loop_work_is_bounded():
    template = "{{#each a}}{{#each ../a}}{{#each ../../a}}{{/each}}{{/each}}{{/each}}"
    assert error(template, {"a": list(range(100))})[0] == "InvalidRenderingParameter"


def test_output_size_is_bounded():
    big = "x" * 200_000
    template = "{{{big}}}" * (templates.MAX_OUTPUT_CHARS // len(big) + 1)
    assert error(template, {"big": big})[0] == "InvalidRenderingParameter"


def test_line_breaks_in_a_rendered_subject_become_spaces():
    out = render("Hi {{name}}", None, None, json.dumps({"name": "a\r\nBcc: x"}))
    assert out.subject == "Hi a Bcc: x"


def test_bulk_data_merges_replacements_over_defaults():
    data = templates.merge_data('{"a": 1, "b": 2}', '{"b": 3}')
    assert data == {"a": 1, "b": 3}


_PIECES = [*"{}#/^>&!~@.[]'\" \n-=*", "{{", "}}", "if", "each", "else", "unless"]
_PIECES += ["with", "this", "../", "inline", "a", "b", "x", "{{#", "{{/"]
_TEMPLATE_TEXT = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    template=_TEMPLATE_TEXT,
    data=st.sampled_from(["{}", '{"a": [1, {"b": 2}], "x": "<"}']),
)
def test_arbitrary_templates_raise_only_template_errors(template, data):
    try:
        render(template, template, template, data)
    except TemplateError as exc:
        assert exc.code in (
            "InvalidTemplate",
            "MissingRenderingAttribute",
            "InvalidRenderingParameter",
        )


@settings(max_examples=200, deadline=None)
@given(template=st.text(max_size=80), data=st.text(max_size=40))
def test_arbitrary_text_and_data_raise_only_template_errors(template, data):
    try:
        render(template, template, template, data)
    except TemplateError:
        pass
