// The version a node reports and the CLI prints; its own file so `shoal --version` loads nothing else.
export const SHOAL_VERSION = "0.1.0";
