"""MathAccuracy cases by class (issue #21), written for qerl from public answer styles: (completion, gold, expected).

Completions are written as models write them; "truncated" rows are scored with `truncated=[True]`.
"""

CORRECT = {
    "boxed": [
        ("The area is $\\boxed{12}$.", "12", 1),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac34", 1),
        ("\\boxed{0.75}", "\\frac{3}{4}", 1),
        ("\\boxed{\\sqrt{117}}", "3\\sqrt{13}", 1),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\dfrac{\\sqrt 3}{2}", 1),
        ("so \\boxed{(x+1)^2}", "x^2+2x+1", 1),
    ],
    "unboxed": [
        ("Therefore, the final answer is $\\frac{1}{2}$.", "0.5", 1),
        ("So $x = 7$.", "7", 1),
        ("The answer is 15.", "15", 1),
        ("Final Answer: The final answer is $3\\sqrt{2}$. I hope it is correct.", "\\sqrt{18}", 1),
        ("<answer>\\frac{2}{3}</answer>", "\\frac23", 1),
        ("Thus, $a + b = 12$.", "12", 1),
        ("Adding 3 and 4, we get 7.", "7", 1),
        ("The answer is 5, since 2+3=5.", "5", 1),
        ("The solutions are $x = 1$ and $x = 2$.", "1, 2", 1),
        ("<answer>42</answer> Checking: 6 * 7 = 42. <answer> 42 </answer>", "42", 1),
    ],
    "inequalities": [
        ("\\boxed{x\\ge5}", "x>=5", 1),
        ("$5 \\le x$", "x \\geq 5", 1),
        ("\\boxed{x > 3}", "(3, \\infty)", 1),
        ("\\boxed{-2 < x < 3}", "(-2,3)", 1),
    ],
    "labelled": [
        ("\\boxed{(p,q)=(3,2)}", "(3,2)", 1),
        ("\\boxed{f(x)=x^2+1}", "x^2+1", 1),
        ("We get \\boxed{k = -3}.", "-3", 1),
        ("\\boxed{x=4}", "4", 1),
    ],
    "lists": [
        ("\\boxed{3 \\text{ and } 5}", "3, 5", 1),
        ("\\boxed{x=3 \\text{ or } x=5}", "3,5", 1),
        ("\\boxed{5, 3}", "3,5", 1),
        ("\\boxed{-1, 2, 4}", "2,4,-1", 1),
        ("\\boxed{\\pm 2}", "2, -2", 1),
    ],
    "separators": [
        ("\\boxed{14{,}916}", "14916", 1),
        ("\\boxed{1\\,000}", "1000", 1),
        ("the answer is 3,5", "3.5", 1),
    ],
    "equations": [
        ("\\boxed{y=2x+1}", "2x - y + 1 = 0", 1),
        ("\\boxed{x^2+y^2=4}", "y^2 = 4 - x^2", 1),
    ],
    "matrices": [
        ("\\boxed{\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 1),
        ("\\boxed{\\begin{pmatrix}\\frac12\\\\-1\\end{pmatrix}}", "\\begin{pmatrix}0.5\\\\-1\\end{pmatrix}", 1),
    ],
    "percent_units": [
        ("\\boxed{28\\%}", "28", 1),
        ("\\boxed{28 \\text{ percent}}", "28\\%", 1),
        ("\\boxed{5\\text{ cm}}", "5", 1),
        ("\\boxed{90^\\circ}", "90", 1),
        ("\\boxed{\\$18.90}", "18.90", 1),
    ],
    "multiple_choice": [
        ("\\boxed{\\text{(E)}}", "\\text{(E)}", 1),
        ("\\boxed{E}", "(E)", 1),
        ("The answer is (E).", "\\text{(E)}", 1),
        ("\\boxed{(C)}", "C", 1),
    ],
    "tolerance": [
        ("\\boxed{0.0833333333333333}", "\\frac{1}{12}", 1),
        ("\\boxed{0.3333333}", "1/3", 1),
        ("\\boxed{3.14159265}", "\\pi", 1),
    ],
    "think": [
        ("<think>I guess \\boxed{4}</think> So \\boxed{5}", "5", 1),
        ("<think>it is 4</think>The answer is $5$.", "5", 1),
    ],
}

FALSE_CREDIT = [  # each must score 0
    ("\\boxed{32, 349}", "32349", 0),
    ("\\boxed{2^{64}+1}", "2^{64}", 0),
    ("\\boxed{|x|}", "x", 0),
    ("\\boxed{\\sqrt{x^2}}", "x", 0),
    ("\\boxed{0.0833}", "\\frac{1}{12}", 0),
    ("\\boxed{3.14}", "\\pi", 0),
    ("\\boxed{10000000001}", "10000000000", 0),
    ("\\boxed{\\pm 2}", "2", 0),
    ("\\boxed{41 \\text{ or } 42}", "42", 0),
    ("\\boxed{41} or \\boxed{42}", "42", 0),
    ("\\boxed{e}", "\\text{(E)}", 0),
    ("\\boxed{(D)}", "\\text{(E)}", 0),
    ("\\boxed{52}", "52_8", 0),
    ("\\boxed{52_9}", "52_8", 0),
    ("\\boxed{(1,2]}", "[1,2)", 0),
    ("\\boxed{x+1}", "y+1", 0),
    ("\\boxed{x \\le 5}", "x < 5", 0),
    ("\\boxed{\\{2,1\\}}", "(1,2)", 0),
    ("<think>so \\boxed{5}", "5", 0),
    ("<think>\\boxed{5}</think>Hmm, the answer is 6.", "5", 0),
    ("I cannot solve this.", "5", 0),
    # unboxed hedges (issue #35): one stated answer or none
    ("#### 41 or 42", "42", 0),
    ("The answer is not 42.", "42", 0),
    ("x = 41 or x = 42", "42", 0),
    ("41, 42, 43, 44", "44", 0),
    ("The roots are 3 and 5", "3", 0),
    ("The answer is maybe 42.", "42", 0),
    ("<answer>41</answer> Or rather <answer>42</answer>", "42", 0),
    ("<answer>41 or 42</answer>", "42", 0),
]

TRUNCATED = [  # scored with truncated=[True]
    ("Adding them up, the answer is 5", "5", 0),
    ("So $x = 5", "5", 0),
    ("We get \\boxed{5}. Let me double-check by subst", "5", 1),
    ("<answer>5</answer> and to verify", "5", 1),
]
