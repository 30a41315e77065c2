"""Draw a pipeline offline: PNG with networkx + matplotlib, or Mermaid text (``.mmd``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from .pipeline import Pipeline


def mermaid(p: "Pipeline") -> str:
    lines = ["flowchart LR"]
    ids = {n: f"c_{i}" for i, n in enumerate(p.order())}
    for n in p.order():
        lines.append(f'    {ids[n]}["{n}<br/><i>{type(p.component(n)).type_name}</i>"]')
    for i, name in enumerate(p.inputs):
        lines.append(f'    in_{i}(["{name}"]):::io')
        for t in p.inputs[name]:
            c, s = t.split(".", 1)
            lines.append(f"    in_{i} -- {s} --> {ids[c]}")
    for a, b, d in sorted(p.graph.edges(data=True), key=lambda e: (e[0], e[1], e[2]["out"])):
        lines.append(f'    {ids[a]} -- "{d["out"]} → {d["inp"]}" --> {ids[b]}')
    for i, (name, src) in enumerate(p.outputs.items()):
        c, s = src.split(".", 1)
        lines.append(f'    out_{i}(["{name}"]):::io')
        lines.append(f"    {ids[c]} -- {s} --> out_{i}")
    lines.append("    classDef io fill:#eef,stroke:#99c")
    return "\n".join(lines) + "\n"


def draw(p: "Pipeline", path: str | Path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".mmd", ".mermaid"):
        path.write_text(mermaid(p), encoding="utf-8")
        return path
    if suffix not in (".png", ".svg", ".pdf"):
        raise UserError(f"cannot draw to {path.name!r}: use a .png, .svg, .pdf or .mmd (Mermaid) file name.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    g = nx.DiGraph()
    for n in p.order():
        g.add_node(n, label=f"{n}\n{type(p.component(n)).type_name}", kind="component")
    for name, targets in p.inputs.items():
        g.add_node(f"in:{name}", label=name, kind="io")
        for t in targets:
            g.add_edge(f"in:{name}", t.split(".", 1)[0], label=t.split(".", 1)[1])
    for a, b, d in p.graph.edges(data=True):
        lab = d["out"] if d["out"] == d["inp"] else f"{d['out']}→{d['inp']}"
        if g.has_edge(a, b):
            g.edges[a, b]["label"] += "\n" + lab
        else:
            g.add_edge(a, b, label=lab)
    for name, src in p.outputs.items():
        g.add_node(f"out:{name}", label=name, kind="io")
        g.add_edge(src.split(".", 1)[0], f"out:{name}", label=src.split(".", 1)[1])
    # layered layout: longest path from the inputs gives the column
    layer = {}
    for n in nx.topological_sort(g):
        preds = list(g.predecessors(n))
        layer[n] = 1 + max((layer[q] for q in preds), default=-1)
    for n in g:
        g.nodes[n]["layer"] = layer[n]
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical")
    width = max(6, 2.6 * (max(layer.values()) + 1))
    height = max(3, 1.2 * max(list(layer.values()).count(v) for v in set(layer.values())) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    comps = [n for n in g if g.nodes[n]["kind"] == "component"]
    ios = [n for n in g if g.nodes[n]["kind"] == "io"]
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=14, node_size=2600, edge_color="#666")
    nx.draw_networkx_nodes(g, pos, nodelist=comps, node_shape="s", node_size=2600, node_color="#dde7f7", edgecolors="#4a6fa5", ax=ax)
    nx.draw_networkx_nodes(g, pos, nodelist=ios, node_shape="o", node_size=1400, node_color="#f3f3d9", edgecolors="#a5a54a", ax=ax)
    nx.draw_networkx_labels(g, pos, labels={n: g.nodes[n]["label"] for n in g}, font_size=8, ax=ax)
    nx.draw_networkx_edge_labels(g, pos, edge_labels=nx.get_edge_attributes(g, "label"), font_size=7, ax=ax)
    ax.set_title(p.name, fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
