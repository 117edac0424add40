"""Answer extraction, reference variants and normalisation (grading/extract.py, grading/answers.py)."""

import pytest

from grading.answers import extract_answer, normalize_answer, reference_variants
from grading.grader import to_latex


@pytest.mark.parametrize(
    "text, expected",
    [
        # boxed: nested braces, the last one wins, the brace-less and \fbox spellings
        (r"So $x = \boxed{\frac{a}{b^{2}}}$.", r"\frac{a}{b^{2}}"),
        (r"First \boxed{\frac{1}{2}}, corrected: \boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"The answer is \boxed 5 here.", "5"),
        (r"\fbox{12}", "12"),
        (r"\boxed{x} then the answer is 7", "x"),  # boxed beats a later marker
        # explicit markers
        ("So the answer is n!", "n!"),
        ("Thus the final answer is 42.", "42"),
        ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
        ("**Answer:** 7", "7"),
        ("**Final Answer**: all real numbers", "all real numbers"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 1,000", "1,000"),
        ("Therefore, the answer is no, it cannot be done.", "No"),
        ("The answer is p(n), but without knowing n we cannot say more.", "p(n)"),
    ],
)
def test_boxed_and_markers(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # CHAMP-style concluding sentences (shortened from GPT-4 0-shot solutions)
        ("a[3][6] = 230.\n\nThe total number of such strings of length 6 is "
         "a[1][6] + a[2][6] + a[3][6] = 230 + 311 + 230 = 771.", "771"),
        ("Therefore, there are 239 strings of length 6.", "239"),
        ("The probability is 5/14.", "5/14"),
        ("So, the number of ways to select an odd number of objects from n distinct objects is 2^(n-1).", "2^(n-1)"),
        ("So, the number of diagonals in a convex polygon of n vertices is given by the expression n(n-3)/2.",
         "n(n-3)/2"),
        ("Therefore, the number of ways that n rooks can be placed peacefully on an n x n chess board is n!.", "n!"),
        ("So, there will be 1,337,333,340,000 terms in the expansion of (x+y+z)^1999.", "1,337,333,340,000"),
        ("So, 3^105 + 4^105 mod 11 = 1 + 1 mod 11 = 2 mod 11 = 2.", "2"),
        ("So, the answer is 99 (100 - 1, because n > 1).", "99"),
        ("So, the smallest value of (1+a_1)(1+a_2)...(1+a_n) as an expression of n is 2^n.", "2^n"),
        ("So, the integer solutions to the equation are x = 6, y = ±56.", "x = 6, y = ±56"),
        ("Therefore, the only solution in positive integers is (x, y) = (2, 1).", "(x, y) = (2, 1)"),
        ("So, the possible values of abcde mod 5 are 0 and 1.", "0 and 1"),
        ("Therefore, we can conclude that x(n) < y(n-1) for all integer values of n ≥ 3.", "x(n) < y(n-1)"),
        ("Therefore, the maximum value of the given expression is 0 when a = 0 or b = 0.", "0"),
        ("So, the factorized form of x^3 + y^3 + z^3 - 3xyz is (x + y + z)(x^2 + y^2 + z^2 - xy - yz - zx).",
         "(x + y + z)(x^2 + y^2 + z^2 - xy - yz - zx)"),
        ("Therefore, at most two of these inequalities can be true at the same time.", "2"),
        ("Therefore, the smallest value of the polynomial f(x) is negative infinity.", "-infinity"),
        ("Thus, 0 is the only possible value.", "0"),
        ("In conclusion, 50 questions are sufficient to find the product of all fifty numbers.", "50"),
        ("Hence we can conclude that the sequence \\((a_n)\\) converges to \\(L = 2\\).", "L = 2"),
        ("Therefore, the possible values of \\(n \\mod 40\\) are \\(n \\equiv 0 \\mod 40\\).", "0"),
        ("So the answer is 2 (mod 7).", "2"),
        ("The answer is $18.", "18"),
        ("Finding a selection where every number is in exactly one progression is hard.", None),
        ("Final Answer: The smallest value of s is 1.", "1"),
        ("Final Answer: `x = 3`.", "x = 3"),
        # a display line after "... is:" and a closing meta sentence
        ("So, the total number of ways to select the quadruple is:\n\n((n(n+1)/2)^2\n\nThis is the final answer.",
         "(n(n+1)/2)^2"),  # the unmatched "(" typo is dropped
        ("So the number of strings is:\n\n\\[ \\frac{4^n}{2} = 2^{2n-1} \\]\n\n"
         "This is the final expression for the number of strings.", "2^{2n-1}"),
        # a pointer sentence makes the line before it final
        ("Total number of strings = C(n - m, m) * 2^(n - 2m)\n\n"
         "This is the expression for the number of binary strings of length n.", "C(n - m, m) * 2^(n - 2m)"),
    ],
)
def test_champ_concluding_sentences(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So, yes, A is greater than 0.1.", "Yes"),
        ("No, a polyhedron cannot exist with an odd number of faces.", "No"),
        ("Therefore, it's impossible to label the edges of a cube by 1, 2,..., 12 so that the sums agree.", "No"),
        ("Therefore, there are no positive integer solutions to the equation.", "No"),
        ("So, 4^545 + 545^4 is not a prime number.", "No"),
        # "no" inside a relative clause does not override the stated count
        ("Therefore, there are 89 subsets of {1, 2,..., 10} that have no two successive numbers.", "89"),
        ("Therefore, there are infinitely many solutions.", "infinitely many"),
    ],
)
def test_yes_no_and_negations(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I am not sure how to approach this problem.",
        # truncated mid-computation: the last sentence states nothing
        "We try A = 6470470490 and B = 11410470491, which is not true. So, we need to increase",
        # "This is" prose with no result before it
        "The exact value depends on n and cannot be simplified into a general formula.",
    ],
)
def test_no_answer(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("239", ["239"]),
        ("C(10, 5), or equivalently 252", ["C(10, 5)", "252"]),
        ("5/14, or approximately 35.7%", ["5/14"]),  # an approximation is not the answer
        ("sum_(i=1)^n i^3, or equivalently (n(n+1)/2)^2", ["sum_(i=1)^n i^3", "(n(n+1)/2)^2"]),
        ("C(n, 4), or an equivalent form such as n(n-1)(n-2)(n-3)/4!", ["C(n, 4)", "n(n-1)(n-2)(n-3)/4!"]),
        ("No", ["No"]),
        ("No integer solutions", ["No"]),
        ("Yes, and the sequence is 1/2^3, 1/2^6, 1/2^9, ...", ["Yes"]),
        ("2^(n-1)", ["2^(n-1)"]),
        ("0 is the only possible value", ["0"]),
        ("-3 is the only possible value", ["-3"]),
        ("The limit exists and is equal to 3", ["3"]),
        ("The only possible value for the limit is sqrt(a)", ["sqrt(a)"]),
        ("The function is periodic, with a period of 8", ["8"]),
        ("100 (i.e., all values)", ["100"]),
        ("0 (i.e., no real-valued zeros)", ["0", "No"]),
        ("At most 0 integer-valued zeros (i.e., no integer zeros)", ["0", "No"]),
        ("((-1)^(n+1)+n+1)/(n+2) (i.e., 1 if for odd n, and n/(n+2) for even n)", ["((-1)^(n+1)+n+1)/(n+2)"]),
        ("2 inequalities", ["2"]),
        ("n times", ["n"]),
        ("Exactly one", ["1"]),
        ("At least 1 number", ["1"]),
        ("x(n)<y(n-1) for all n≥3", ["x(n)<y(n-1)"]),
        ("376 and 625", ["376 and 625"]),
        ("The sequence does not exist", ["No"]),
        ("It is not possible", ["No"]),
        ("There are no prime numbers in the sequence", ["No"]),
        ("Infinitely many solutions", ["infinitely many"]),
        ("Always greater than 20", ["Always greater than 20"]),  # kept as text, compared as text
        ("Monotonically increasing", ["Monotonically increasing"]),
        # benchmark forms
        ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18.\n#### 18", ["18"]),
        ("27.0", ["27"]),
        (27.0, ["27"]),
        ('["$\\\\frac{1}{2}$"]', ["$\\frac{1}{2}$"]),
        (["$69$", "$84$"], ["$69$, $84$"]),
        ("[-1, 1]", ["[-1, 1]"]),  # an interval, not a list
        (r"\left( 3, \frac{\pi}{2} \right)", [r"\left( 3, \frac{\pi}{2} \right)"]),
    ],
)
def test_reference_variants(reference, expected):
    assert reference_variants(reference) == expected


@pytest.mark.parametrize("bad, name", [(True, "bool"), (None, "NoneType"), ([1, 2], "list")])
def test_reference_variants_rejects_other_types(bad, name):
    with pytest.raises(TypeError, match=f"not {name}"):
        reference_variants(bad)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (r"$\dfrac{1}{2}$", "1/2"),
        (r"\boxed{\tfrac{3}{4}}", "3/4"),
        ("1,000", "1000"),
        ("18 dollars", "18"),
        (r"18\text{ dollars}", "18"),
        (r"\$18.90", "18.90"),
        (r"90^\circ", "90"),
        (r"35.7\%", "35.7%"),
        ("2^{n-1}", "2^(n-1)"),
        ("2^(n-1)", "2^(n-1)"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        ("No, it is not possible", "no"),
        ("none", "no"),
        ("x = 5", "5"),
        ("x=y=0", "x=0,y=0"),
        ("(x, y) = (2, 1)", "x=2,y=1"),
        (r"\sqrt{3}/3", "sqrt(3)/3"),
        ("√3/3", "sqrt(3)/3"),
        (r"\binom{10}{5}", "C(10,5)"),
        ("(2n choose n)", "C(2n,n)"),
        ("n*(n+1)", "n(n+1)"),
        (r"2\cdot 3", "2*3"),  # only number*number keeps its sign
        ("∞", "inf"),
        ("1, 4, and 9", "1,4,9"),
        ("Monotonically Increasing.", "monotonically increasing"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "ascii_math, expected",
    [
        ("2^(n-1)", "$2^(n-1)$"),
        ("sqrt(3)/3", r"$\sqrt{3}/3$"),
        ("C(10, 5)", r"$\binom{10}{5}$"),
        ("(2n choose n) / (n + 1)", r"$\binom{2n}{n} / (n + 1)$"),
        ("sum_(i=1)^n i^3", r"$\sum_{i=1}^{n} i^3$"),
        ("2^floor(n/2)", r"$2^{\lfloor n/2 \rfloor}$"),
        ("(x, y) = (2, 1)", "$x=2, y=1$"),
        ("376 and 625", "$376, 625$"),
        ("35.7%", "$35.7/100$"),
        ("x ≥ 0", r"$x \ge  0$"),
        ("$\\frac{1}{2}$", r"$\frac{1}{2}$"),
    ],
)
def test_to_latex(ascii_math, expected):
    assert to_latex(ascii_math) == expected
