"""Preview the docs site without Quarto: nbdev's processed notebooks, rendered by Sphinx + MyST-NB (Furo theme).

On a machine with Quarto, `nbdev_docs` builds the real site from `_quarto.yml` and `nbs/sidebar.yml`. Where
Quarto is absent, `python tools/docs_preview.py --out DIR` builds a preview that behaves like it:

1. nbdev does what `nbdev_docs` does before Quarto runs: `nbs/nbdev.yml`, `nbs/sidebar.yml`, the doc-link index,
   and `proc_nbs` (front matter, executed `show_doc` cells, hidden and exported cells removed, doc links added).
2. Each processed notebook gets the small translation Quarto itself would apply: the front matter becomes the
   page title and subtitle (and the page's file name, `output-file`); the `#|` cell options are applied and
   removed (`echo: false` hides the input, `output: false` the output, `include: false` the cell, `output: asis`
   turns markdown output into page markdown); `{target=...}` link attributes become HTML; links into the site
   (`doc_host` + `doc_baseurl` of settings.ini) and `NN_name.ipynb` links become links to the local pages; each
   heading keeps the id Pandoc gives it, so `losses.html#sup_loss` means the same page and place on both sites.
3. Sphinx (MyST-NB, Furo) builds the pages, with a sidebar in `sidebar.yml` order, next/previous links and
   Sphinx's offline search. MathJax 3 and the Jupyter widgets HTML manager come from the npm registry at build
   time (`npm pack`) and are served from the site itself: nothing is fetched when a page is viewed.
4. `check_site` reads the built HTML and fails the build when a page lacks a title, shows raw `$...$` outside
   code, contains `{target=` or `#|`, links to a local file or anchor that does not exist, or still links to the
   published site; and when a site link in README.md points to a page or anchor the site does not have.

`--readme` also regenerates README.md from nbs/index.ipynb (as `nbdev_readme` does, without Quarto).
The site needs no server: open DIR/index.html in a browser.
"""
from __future__ import annotations
import argparse, json, re, shutil, subprocess, sys, tarfile, time, warnings
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote

NPM_PACKAGES = {'mathjax': '3.2.2', '@jupyter-widgets/html-manager': '1.0.15'}
DEFAULT_CACHE = Path.home() / '.cache' / 'eln_nb_docs'  # npm tarballs, fetched once
SRC_DIR = '_preview_src'  # Sphinx source folder written by the build (ignored by git)

# ---------------------------------------------------------------- Pandoc-style heading ids

def pandoc_slug(text: str) -> str:
    "The identifier Pandoc (and so Quarto) gives a heading with plain text `text`."
    s = re.sub(r'[^\w\s.-]', '', text.strip().lower())  # keep alphanumerics, _, -, . and spaces
    s = re.sub(r'\s+', '-', s)
    s = re.sub(r'^[^a-z]+', '', s)                        # everything up to the first letter goes
    return s or 'section'

# ---------------------------------------------------------------- notebook translation

_OPT = re.compile(r'^\s*#\|\s?(.*)$')
_ATTR_LINK = re.compile(r'\[([^\]]*)\]\(([^)\s]+)\)\{([^}]*)\}')

def cell_options(src: str):
    "(Quarto/nbdev `#|` options of a code cell as a dict, the source without them)."
    opts, rest = {}, []
    for line in src.splitlines():
        m = _OPT.match(line)
        if m:
            k, _, v = m.group(1).partition(':')
            opts[k.strip()] = v.strip().strip('"\'').lower() if v else True
        else: rest.append(line)
    return opts, '\n'.join(rest).strip('\n')

def _attr_link(m):
    "`[text](url){target=... style=...}` (Pandoc link attributes) as an HTML link."
    text, url, attrs = m.groups()
    cls = 'nbdev-source' if text == 'source' else 'nbdev-link'
    tgt = ' target="_blank" rel="noopener"' if 'target=' in attrs else ''
    return f'<a class="{cls}" href="{url}"{tgt}>{text}</a>'

class Translator:
    "Turns nbdev's processed notebooks into notebooks that MyST-NB renders as Quarto would."
    def __init__(self, site_url: str, pages: dict):
        self.site = site_url.rstrip('/') + '/'   # doc_host + doc_baseurl
        self.pages = pages                       # notebook file name -> output html name

    def links(self, md: str) -> str:
        md = _ATTR_LINK.sub(_attr_link, md)
        def site(m):
            rest = m.group(2)
            return m.group(1) + (rest or 'index.html')
        md = re.sub(r'(\]\(|href=")' + re.escape(self.site) + r'([^)"\s]*)', site, md)
        md = re.sub(re.escape(self.site.rstrip('/')) + r'(?=[)"\s])', 'index.html', md)
        def nb(m):
            name, frag = m.group(2), m.group(3) or ''
            return m.group(1) + self.pages.get(name, name) + frag
        return re.sub(r'(\]\(|href=")([\w./-]+\.ipynb)(#[^)"\s]*)?', nb, md)

    def markdown(self, md: str) -> str:
        "Links translated; a show_doc block's leading `---` as an HTML rule (docutils refuses a leading transition)."
        md = self.links(md)
        return re.sub(r'\A\s*---\s*\n', '<hr class="nbdev-rule">\n\n', md)

    def notebook(self, nb: dict) -> tuple[dict, dict]:
        "(translated notebook, front matter)."
        import yaml
        cells, front = [], {}
        for c in nb['cells']:
            src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
            if c['cell_type'] == 'raw' and src.lstrip().startswith('---') and not front:
                front = yaml.safe_load(src.strip().strip('-')) or {}
                continue
            if c['cell_type'] == 'markdown':
                if 'THIS FILE WAS AUTOGENERATED' in src and src.strip().startswith('<!--'): continue
                cells.append(dict(c, source=self.markdown(src)))
                continue
            if c['cell_type'] != 'code': cells.append(c); continue
            opts, code = cell_options(src)
            if str(opts.get('include', 'true')) == 'false': continue
            echo = str(opts.get('echo', 'true')) != 'false'
            outs = [] if str(opts.get('output', 'true')) == 'false' else c.get('outputs', [])
            if opts.get('output') == 'asis':
                md = [''.join(o['data']['text/markdown']) for o in outs if 'text/markdown' in o.get('data', {})]
                if echo and code: cells.append(dict(c, source=code, outputs=[]))
                cells += [dict(cell_type='markdown', metadata={}, source=self.markdown(m)) for m in md]
                continue
            meta = dict(c.get('metadata', {}))
            tags = list(meta.get('tags', []))
            if not echo or not code: tags.append('remove-input')
            if not outs and (not echo or not code): continue
            if tags: meta['tags'] = tags
            for o in outs:  # markdown outputs go through MyST too: same link translation
                if 'text/markdown' in o.get('data', {}):
                    o['data']['text/markdown'] = self.markdown(''.join(o['data']['text/markdown']))
            cells.append(dict(c, source=code, metadata=meta, outputs=outs))
        title, desc = front.get('title', ''), front.get('description', '')
        head = f'# {title}\n\n' + (f'{{.subtitle}}\n{desc}\n' if desc else '')
        cells.insert(0, dict(cell_type='markdown', metadata={}, source=head))
        for i, c in enumerate(cells): c['id'] = c.get('id') or f'preview-{i}'
        return dict(nb, cells=cells), front

# ---------------------------------------------------------------- assets from the npm registry

def vendor_npm(static: Path, cache: Path):
    "MathJax 3 (SVG output: no font files) and the widgets HTML manager, packed from the npm registry."
    cache.mkdir(parents=True, exist_ok=True)
    for name, ver in NPM_PACKAGES.items():
        tgz = cache / f"{name.lstrip('@').replace('/', '-')}-{ver}.tgz"
        if not tgz.exists():
            if not shutil.which('npm'): sys.exit('npm is needed to fetch MathJax and the widget manager (apt-get install npm)')
            subprocess.run(['npm', 'pack', '--silent', f'{name}@{ver}'], cwd=cache, check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(tgz) as tf:
            keep = {'mathjax': ('package/es5/tex-svg-full.js', 'package/LICENSE'),
                    '@jupyter-widgets/html-manager': ('package/dist/', 'package/LICENSE')}[name]
            dst = static / name.split('/')[-1]
            for m in tf.getmembers():
                if m.isfile() and m.name.startswith(keep) and not m.name.endswith('.map'):
                    out = dst / m.name.split('/', 1)[1].split('/', 1)[-1]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tf.extractfile(m).read())

# ---------------------------------------------------------------- Sphinx

CONF = '''\
import sys; sys.path.insert(0, {tools!r})
project = {title!r}
author = {author!r}
copyright = {copyright!r}
extensions = ['myst_nb']
source_suffix = {{'.ipynb': 'myst-nb', '.md': 'myst-nb'}}
exclude_patterns = ['_build']
nb_execution_mode = 'off'
nb_merge_streams = True
myst_enable_extensions = ['dollarmath', 'amsmath', 'attrs_inline', 'attrs_block', 'colon_fence']
myst_all_links_external = True
myst_heading_anchors = 6
myst_heading_slug_func = 'docs_preview.pandoc_slug'
mathjax_path = 'mathjax/tex-svg-full.js'
nb_ipywidgets_js = {{'mathjax2-shim.js': {{}}, 'html-manager/embed.js': {{}}}}
html_theme = 'furo'
html_title = {title!r}
html_static_path = ['_static']
html_css_files = ['preview.css']
html_theme_options = {{'navigation_with_keys': True, 'top_of_page_buttons': []}}
html_show_sourcelink = False
html_copy_source = False
suppress_warnings = ['myst.header', 'myst.xref_missing', 'config.cache', 'misc.highlighting_failure']
'''

CSS = '''\
p.subtitle { font-size: 1.2rem; color: var(--color-foreground-secondary); margin-top: -0.6rem; }
a.nbdev-source { float: right; font-size: smaller; }
p:has(> a.nbdev-source) { margin: 0; }
/* a documented symbol's heading has one size whatever the section depth (Quarto shows show_doc's ### as h3) */
p:has(> a.nbdev-source) + section > :is(h2, h3, h4, h5, h6) { font-size: 1.35em; margin-top: 0.25rem; }
hr.nbdev-rule { margin: 2rem 0 0.5rem; border: 0; border-top: 1px solid var(--color-background-border); }
/* links that are inline code look like links (Quarto colours them) */
a code.literal, a code { color: var(--color-link); }
a:hover code { text-decoration: underline; }
/* widget outputs: no inner scrollbars */
.cell_output .jupyter-widgets { overflow: visible; }
'''

# The widgets' HTML manager typesets labels through the MathJax 2 API (MathJax.Hub.Queue); MathJax 3 has none.
SHIM = """\
window.addEventListener('load', function () {
  var M = window.MathJax;
  if (M && !M.Hub) M.Hub = {Queue: function () {
    var el = arguments[0] && arguments[0][2];
    if (M.typesetPromise) M.typesetPromise(el ? [el] : undefined).catch(function () {});
  }};
}, true);
"""

def _toctree(contents, pages, caption=None):
    "Hidden toctree(s) for the sidebar, in sidebar.yml order (sections become captions)."
    out, flat = [], []
    for item in contents:
        if isinstance(item, dict) and 'section' in item:
            out += _toctree(item.get('contents', []), pages, item['section'])
        else:
            f = item if isinstance(item, str) else item.get('href', item.get('file', ''))
            name = Path(f).name
            if name in pages and pages[name] != 'index.html': flat.append(Path(pages[name]).stem)
    if flat:
        cap = f':caption: {caption}\n' if caption else ''
        out.insert(0, '```{toctree}\n:hidden:\n:maxdepth: 1\n' + cap + '\n' + '\n'.join(flat) + '\n```\n')
    return out

def build(out: Path, cache: Path) -> dict:
    "Processed notebooks -> Sphinx site in `out`; returns facts about the build."
    import yaml
    from nbdev.config import get_config
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.doclinks import _build_modidx
    from nbdev.serve import proc_nbs
    warnings.filterwarnings('ignore', message='Cell is missing an id field')  # nbformat, on nbdev's processed copies
    cfg = get_config()
    refresh_quarto_yml()
    nbdev_sidebar(force=True)
    _build_modidx()
    proc = Path(proc_nbs(cfg.nbs_path, n_workers=0, force=True))
    nbs = sorted(p for p in proc.rglob('*.ipynb') if not any(s.startswith(('_', '.')) for s in p.relative_to(proc).parts))
    fronts = {}
    for p in nbs:
        nb = json.loads(p.read_text(encoding='utf-8'))
        raw = next((''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'raw'), '')
        fronts[p] = yaml.safe_load(raw.strip().strip('-')) if raw.lstrip().startswith('---') else {}
    pages = {p.name: (fronts[p] or {}).get('output-file', p.with_suffix('.html').name) for p in nbs}
    site_url = cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')
    tr = Translator(site_url, pages)
    src = Path(cfg.config_path) / SRC_DIR
    shutil.rmtree(src, ignore_errors=True); (src / '_static').mkdir(parents=True)
    errors = []
    for p in nbs:
        nb = json.loads(p.read_text(encoding='utf-8'))
        for c in nb['cells']:
            for o in c.get('outputs', []):
                if o.get('output_type') == 'error': errors.append(f"{p.name}: stored error output {o.get('ename')}: {o.get('evalue')}")
        tnb, front = tr.notebook(nb)
        dst = src / Path(pages[p.name]).with_suffix('.ipynb')
        if dst.name == 'index.ipynb':
            sidebar = yaml.safe_load((Path(cfg.nbs_path) / 'sidebar.yml').read_text())['website']['sidebar']['contents']
            tnb['cells'] += [dict(cell_type='markdown', metadata={}, source=t) for t in _toctree(sidebar, pages)]
        dst.write_text(json.dumps(tnb), encoding='utf-8')
    for extra in (p for p in Path(cfg.nbs_path).rglob('*') if p.is_file() and p.suffix in ('.png', '.jpg', '.jpeg', '.gif', '.svg')):
        d = src / extra.relative_to(cfg.nbs_path); d.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(extra, d)
    vendor_npm(src / '_static', cache)
    (src / '_static' / 'preview.css').write_text(CSS)
    (src / '_static' / 'mathjax2-shim.js').write_text(SHIM)
    (src / 'conf.py').write_text(CONF.format(tools=str(Path(__file__).resolve().parent), title=cfg.title,
                                             author=cfg.author, copyright=cfg.copyright))
    from sphinx.cmd.build import build_main
    html = src / '_build' / 'html'  # MyST-NB writes next to the output folder: keep that inside SRC_DIR
    rc = build_main(['-b', 'html', '-q', '-j', '1', '-d', str(src / '_build' / 'doctrees'), str(src), str(html)])
    if rc: errors.append(f'sphinx-build exited {rc}')
    shutil.rmtree(out, ignore_errors=True); out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(html), str(out))
    errors += [f'{nb}: no page {page} in the site' for nb, page in pages.items() if not (out / page).exists()]
    return dict(proc=proc, pages=pages, site_url=site_url, errors=errors, readme=Path(cfg.config_path) / 'README.md')

# ---------------------------------------------------------------- checks on the built HTML

class _Page(HTMLParser):
    "Ids, links, title, h1 and the visible text outside code of one HTML page."
    SKIP = {'code', 'pre', 'script', 'style', 'kbd', 'samp', 'textarea'}
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.title, self.h1, self.subtitle = set(), [], '', [], False
        self._stack, self._in_title, self._in_h1, self.text, self.alltext = [], False, False, [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        for k in ('href', 'src'):
            if a.get(k) and tag in ('a', 'img', 'link', 'script', 'source', 'iframe'): self.links.append((tag, a[k]))
        if tag == 'p' and 'subtitle' in (a.get('class') or '').split(): self.subtitle = True
        if tag == 'title': self._in_title = True
        if tag == 'h1': self._in_h1 = True; self.h1.append('')
        if tag in ('br', 'img', 'hr', 'meta', 'link', 'input'): return
        skip = tag in self.SKIP or 'math' in (a.get('class') or '').split()
        self._stack.append((tag, skip))
    def handle_endtag(self, tag):
        if tag == 'title': self._in_title = False
        if tag == 'h1': self._in_h1 = False
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag: del self._stack[i:]; break
    def handle_data(self, data):
        if self._in_title: self.title += data
        if self._in_h1: self.h1[-1] += data
        tags = [t for t, _ in self._stack]
        inline_code = 'code' in tags and 'pre' not in tags  # prose may name a cell option in `code`
        if not ('script' in tags or 'style' in tags or inline_code): self.alltext.append(data)
        if not any(s for _, s in self._stack): self.text.append(data)

_RAW_MATH = re.compile(r'(?<![\\$])\$(?!\s)[^$\n]{1,400}?(?<![\s\\])\$(?!\d)|\$\$[^$]+\$\$')

def check_site(out: Path, site_url: str, readme: Path | None = None, verbose=True) -> dict:
    "Problems of the built site (a list of strings) and counts; see the module docstring."
    out = Path(out)
    htmls = sorted(p for p in out.rglob('*.html') if not p.relative_to(out).parts[0].startswith('_'))
    parsed = {}
    for p in htmls:
        pg = _Page(); pg.feed(p.read_text(encoding='utf-8')); parsed[p.resolve()] = pg
    problems, n_local, n_anchor, n_external = [], 0, 0, 0
    special = {'genindex.html', 'search.html', 'py-modindex.html'}
    for p, pg in parsed.items():
        rel = p.relative_to(out.resolve())
        is_page = rel.name not in special
        if is_page:
            if not pg.h1 or not pg.h1[0].strip(): problems.append(f'{rel}: no <h1> title')
            if not pg.title.strip() or pg.title.strip().lower().startswith('notebook'): problems.append(f'{rel}: no <title>')
            if not pg.subtitle: problems.append(f'{rel}: no subtitle')
        text = ''.join(pg.text)
        for m in _RAW_MATH.finditer(text): problems.append(f'{rel}: raw maths outside code: {m.group(0)[:60]!r}')
        alltext = ''.join(pg.alltext)
        if '{target=' in alltext or '{target=' in text: problems.append(f'{rel}: literal "{{target="')
        if '#|' in alltext: problems.append(f'{rel}: literal "#|" (a cell option shown)')
        if 'show_doc(' in alltext: problems.append(f'{rel}: a show_doc call shown')
        for tag, url in pg.links:
            u = urlsplit(url)
            if url.startswith(site_url.rstrip('/')):
                problems.append(f'{rel}: link to the published site instead of the local page: {url}'); continue
            if u.scheme or url.startswith('//'):
                if u.scheme not in ('data', 'mailto', 'javascript'): n_external += 1
                continue
            if not u.path and not u.fragment: continue
            target = (p.parent / unquote(u.path)).resolve() if u.path else p
            if u.path and target.is_dir(): target = target / 'index.html'
            n_local += 1
            if not target.exists(): problems.append(f'{rel}: broken link {url}'); continue
            if u.fragment and target.suffix == '.html' and tag == 'a':
                n_anchor += 1
                tp = parsed.get(target)
                if tp is None: tp = _Page(); tp.feed(target.read_text(encoding='utf-8')); parsed[target] = tp
                if unquote(u.fragment) not in tp.ids: problems.append(f'{rel}: no anchor #{u.fragment} in {target.name}')
    n_readme = 0
    if readme is not None and Path(readme).exists():  # README's links into the site: the page and anchor must exist here
        for url in re.findall(r'\]\((' + re.escape(site_url.rstrip('/')) + r'[^)\s]*)\)', Path(readme).read_text(encoding='utf-8')):
            n_readme += 1
            u = urlsplit(url[len(site_url.rstrip('/')):].lstrip('/') or 'index.html')
            tgt = (out / (u.path or 'index.html')).resolve()
            if not tgt.exists(): problems.append(f'README.md: site link to a missing page: {url}')
            elif u.fragment and u.fragment not in parsed[tgt].ids: problems.append(f'README.md: site link to a missing anchor: {url}')
    pages = [p for p in parsed if p.name not in special and out.resolve() in p.parents]
    res = dict(pages=len(htmls) - len(special & {p.name for p in htmls}), local_links=n_local, anchors=n_anchor,
               external_links=n_external, readme_links=n_readme, problems=problems)
    if verbose:
        print(f"check: {res['pages']} pages, {n_local} local links ({n_anchor} with anchors), {n_readme} README site links,"
              f" {n_external} external links not followed: {len(problems)} problem(s)")
        for pr in problems[:200]: print('  ' + pr)
    return res

# ---------------------------------------------------------------- README

def _front_to_title(md):
    "Replace the YAML front matter that nbdev writes with a `# title` and `> description` header."
    import yaml
    md = md.lstrip()
    if not md.startswith('---'): return md
    _, front, body = md.split('---', 2)
    meta = yaml.safe_load(front) or {}
    body = body.replace('<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->', '').strip()
    head = f"# {meta.get('title', '')}\n\n> {meta.get('description', '')}\n\n"
    return head + body + '\n'

def write_readme(proc: Path):
    "README.md from the processed index notebook (what `nbdev_readme` does with Quarto)."
    import nbformat
    from nbconvert import MarkdownExporter
    from nbdev.config import get_config
    cfg = get_config()
    from traitlets.config import Config
    nb = nbformat.read(proc / cfg.readme_nb, as_version=4)
    for c in nb.cells:                                          # `#| echo: false`: the output without its code, as Quarto does
        if c.cell_type == 'code' and re.search(r'^#\|\s*echo:\s*false', c.source, re.M):
            c.metadata.setdefault('tags', []).append('remove-input')
    conf = Config({'TagRemovePreprocessor': {'enabled': True, 'remove_input_tags': {'remove-input'}}})
    md, res = MarkdownExporter(config=conf).from_notebook_node(nb, resources={'output_files_dir': 'README_files'})
    for name, data in res.get('outputs', {}).items():          # figures of the index notebook, next to README.md
        f = Path(cfg.config_path) / name; f.parent.mkdir(exist_ok=True); f.write_bytes(data)
    Path(cfg.config_path / 'README.md').write_text(_front_to_title(md), encoding='utf-8')
    print('wrote README.md')

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='_site_preview', help='folder for the site (default: _site_preview)')
    ap.add_argument('--readme', action='store_true', help='also regenerate README.md from nbs/index.ipynb')
    ap.add_argument('--no-check', action='store_true', help='build only, skip the site checks')
    ap.add_argument('--cache', default=str(DEFAULT_CACHE), help='where npm tarballs are kept')
    args = ap.parse_args()
    t0 = time.time()
    info = build(Path(args.out), Path(args.cache))
    if args.readme: write_readme(info['proc'])
    print(f"built {len(info['pages'])} notebook pages into {args.out}/ in {time.time() - t0:.0f}s")
    problems = list(info['errors'])
    if not args.no_check:
        problems += check_site(Path(args.out), info['site_url'], info['readme'])['problems']
    for e in info['errors']: print('ERROR ' + e, file=sys.stderr)
    if problems: sys.exit(f'docs preview: {len(problems)} problem(s)')
    print('docs preview: all checks passed')

if __name__ == '__main__': main()
