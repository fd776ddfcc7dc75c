// The one table of codes: OS errors on files become typed errors that name the file and carry
// the exit code scripts branch on.
import { describe, expect, test } from "bun:test";
import { fileError, ShoalError } from "../../core/errors.ts";

const osError = (code: string) => Object.assign(new Error(`${code}: raw text`), { code });

describe("fileError", () => {
  test("a path that cannot be opened is BAD_PATH, exit 2, naming the file and the OS's words", () => {
    for (const code of ["ENOENT", "ENOTDIR", "EISDIR", "EACCES", "EROFS"]) {
      const error = fileError(osError(code), "read archive from", "/x/y.tar");
      expect(error.code).toBe("BAD_PATH");
      expect(error.exitCode).toBe(2);
      expect(error.message).toStartWith("cannot read archive from '/x/y.tar': ");
      expect(error.message).toEndWith(`(${code})`);
    }
  });

  test("a full disk is NO_SPACE and any other I/O failure IO_ERROR, both exit 6", () => {
    for (const code of ["ENOSPC", "EDQUOT", "EFBIG"]) expect(fileError(osError(code), "export to", "f").code).toBe("NO_SPACE");
    const eio = fileError(osError("EIO"), "export to", "f");
    expect([eio.code, eio.exitCode, eio.message]).toEqual(["IO_ERROR", 6, "cannot export to 'f': input/output error (EIO)"]);
    expect(fileError(new Error("odd"), "export to", "f").message).toBe("cannot export to 'f': odd");
  });

  test("stdout and stdin are named bare; a note goes after the name; a ShoalError passes through", () => {
    expect(fileError(osError("ENOSPC"), "write to", "stdout").message).toBe("cannot write to stdout: no space left on device (ENOSPC)");
    expect(fileError(osError("ENOENT"), "write archive to", "/a/b", "directory '/a' does not exist").message).toBe(
      "cannot write archive to '/a/b' (directory '/a' does not exist): no such file or directory (ENOENT)",
    );
    const typed = new ShoalError("BAD_ARCHIVE", "truncated");
    expect(fileError(typed, "read", "f")).toBe(typed);
  });
});
