// A process with the node's fatal handling, made to fail in the way argv[2] names (see fatal-exit.test.ts).
import { invariant } from "../../core/invariant.ts";
import { exitOnFatal } from "../../transport/node/fatal-exit.ts";

exitOnFatal({ error: (message) => process.stderr.write(`ERROR ${message}\n`) });
const how = process.argv[2];
if (how === "rejection") void Promise.reject(new Error("a lost error path"));
if (how === "invariant") setTimeout(() => invariant(1 + 1 === 3, "arithmetic holds"), 1);
if (how === "fsync") {
  const err = Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
  void Promise.resolve().then(() => {
    throw err;
  });
}
// Would keep running (and print) if the failure did not end the process.
setTimeout(() => process.stdout.write("still running\n"), 500);
