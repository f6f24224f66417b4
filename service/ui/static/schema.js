// The vocabulary the viewer draws with, read once from the API before any page runs (GET /ui/schema.json,
// built by service/ui/schema.py from workers/vocabulary): node kinds with their colours, shapes and layout
// rows, sites, job states, pruning defaults. Nothing here repeats it.

export const SCHEMA = await (await fetch(new URL("schema.json", import.meta.url))).json();

/** What the viewer knows about a node kind (an unknown kind is drawn like a feature). */
export const kindInfo = (kind) => SCHEMA.kinds[kind] || SCHEMA.kinds.feature;
