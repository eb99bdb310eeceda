// A measurement or probe that either produced values or explains, in words, why it could not.
export type Finding<T extends object> = ({ ok: true } & T) | { ok: false; reason: string };
