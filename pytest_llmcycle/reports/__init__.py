"""Layer 6, rendering only: the terminal table and failure messages (``terminal``), Markdown
(``markdown``), HTML (``htmlpage``), JSON (``jsondoc``), and writing them out with the history,
TensorBoard and JUnit properties (``outputs``).
"""
