"""The KLIK dossier: the task's story as one self-contained HTML page (and a PDF of it).

``model`` gathers the facts from the stored state (pure), ``timeline`` lays out the SVG
timeline (pure), ``page`` renders the HTML with Jinja2 and prints the PDF with WeasyPrint.
"""
