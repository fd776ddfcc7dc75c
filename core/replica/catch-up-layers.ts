// What a copy that was away must do to its layers before it takes a catch-up copy: snapshots
// were cut while it was away (it was in no set, so no participant), and the pages it holds are
// all from before those cuts. Freezing its head into each missing snapshot layer, oldest first,
// puts those pages where the other copies have them; the pages written since come with every
// layer in the catch-up copies and replace what it holds.

export type LayerCatchUp =
  /** Freeze the head into these snapshot layers, in this order (none: the stacks agree). */
  | { kind: "freeze"; layers: string[] }
  /** This copy has a snapshot the source's stack lacks: the copy was read before a cut this node has seen. Drop it; the source sends it again. */
  | { kind: "behind" }
  /** The stacks disagree below their tops (a snapshot deleted on one side only): nothing can be applied until they agree. */
  | { kind: "diverged"; here: string[]; source: string[] };

/**
 * `source` and `here` are the head's chains of snapshot layers, oldest first, without the head:
 * the source's as its copy's stack says, this node's as its store holds it.
 */
export function catchUpLayers(source: readonly string[], here: readonly string[]): LayerCatchUp {
  const common = Math.min(source.length, here.length);
  for (let index = 0; index < common; index++) {
    if (source[index] !== here[index]) return { kind: "diverged", here: [...here], source: [...source] };
  }
  if (here.length > source.length) return { kind: "behind" };
  return { kind: "freeze", layers: source.slice(here.length) };
}

/** The chain of layers below `head` in a stack given as (id, parent) pairs, oldest first, without the head. */
export function chainBelow(head: string, layers: readonly { id: string; parent?: string }[]): string[] {
  const parents = new Map(layers.map((layer) => [layer.id, layer.parent]));
  const chain: string[] = [];
  for (let at = parents.get(head); at !== undefined && chain.length <= layers.length; at = parents.get(at)) chain.unshift(at);
  return chain;
}
