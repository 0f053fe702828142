;; A hand-written module that speaks OPA's wasm ABI (version 1.1: the exports opa-wasm calls
;; and `opa build -t wasm` emits), standing in for a compiled policy where no `opa` CLI exists.
;; Values are kept as their JSON text: [length: i32][bytes]. The tests fill in:
;;   __BUILTINS__     the `builtins()` object (name -> id) as a length-prefixed WAT string
;;   __ENTRYPOINTS__  the `entrypoints()` object (name -> id), the same way
;;   __EVAL__         the body of `eval`: `(call $answer (local.get $ctx) (i32.const 4))` answers
;;                    with `data`, offset 0 with `input`; a `(loop ...)` never ends.
(module
  (import "env" "memory" (memory 2))
  (global $heap (mut i32) (i32.const 65536))
  (global (export "opa_wasm_abi_version") i32 (i32.const 1))
  (global (export "opa_wasm_abi_minor_version") i32 (i32.const 1))
  (data (i32.const 1024) "__BUILTINS__")
  (data (i32.const 2048) "__ENTRYPOINTS__")
  (data (i32.const 3072) "\0b\00\00\00[{\"result\":")
  (data (i32.const 3200) "\02\00\00\00}]")

  (func $malloc (export "opa_malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (block $enough
      (loop $grow
        (br_if $enough
          (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (drop (memory.grow (i32.const 1)))
        (br $grow)))
    (local.get $p))
  (func (export "opa_free") (param i32))
  (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))
  (func (export "opa_heap_ptr_set") (param i32) (global.set $heap (local.get 0)))

  ;; The length of the text at $s: up to $max bytes, or to a NUL (callers may count it).
  (func $strlen (param $s i32) (param $max i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $max)))
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $s) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $i))

  (func (export "opa_json_parse") (param $s i32) (param $n i32) (result i32)
    (local $v i32)
    (local.set $n (call $strlen (local.get $s) (local.get $n)))
    (local.set $v (call $malloc (i32.add (local.get $n) (i32.const 4))))
    (i32.store (local.get $v) (local.get $n))
    (memory.copy (i32.add (local.get $v) (i32.const 4)) (local.get $s) (local.get $n))
    (local.get $v))
  (func (export "opa_json_dump") (param $v i32) (result i32)
    (local $n i32) (local $s i32)
    (local.set $n (i32.load (local.get $v)))
    (local.set $s (call $malloc (i32.add (local.get $n) (i32.const 1))))
    (memory.copy (local.get $s) (i32.add (local.get $v) (i32.const 4)) (local.get $n))
    (i32.store8 (i32.add (local.get $s) (local.get $n)) (i32.const 0))
    (local.get $s))

  (func (export "builtins") (result i32) (i32.const 1024))
  (func (export "entrypoints") (result i32) (i32.const 2048))

  ;; One context at 4000: input at +0, data at +4, result at +8.
  (func (export "opa_eval_ctx_new") (result i32) (i32.const 4000))
  (func (export "opa_eval_ctx_set_input") (param i32 i32)
    (i32.store (local.get 0) (local.get 1)))
  (func (export "opa_eval_ctx_set_data") (param i32 i32)
    (i32.store offset=4 (local.get 0) (local.get 1)))
  (func (export "opa_eval_ctx_set_entrypoint") (param i32 i32))
  (func (export "opa_eval_ctx_get_result") (param i32) (result i32)
    (i32.load offset=8 (local.get 0)))

  ;; Appends value $v's bytes at $at; returns the address after them.
  (func $append (param $at i32) (param $v i32) (result i32)
    (memory.copy (local.get $at) (i32.add (local.get $v) (i32.const 4)) (i32.load (local.get $v)))
    (i32.add (local.get $at) (i32.load (local.get $v))))

  ;; The result set [{"result": <the value at ctx+offset>}].
  (func $answer (param $ctx i32) (param $offset i32)
    (local $value i32) (local $n i32) (local $out i32) (local $at i32)
    (local.set $value (i32.load (i32.add (local.get $ctx) (local.get $offset))))
    (local.set $n (i32.add (i32.load (local.get $value)) (i32.const 13)))
    (local.set $out (call $malloc (i32.add (local.get $n) (i32.const 4))))
    (i32.store (local.get $out) (local.get $n))
    (local.set $at (call $append (i32.add (local.get $out) (i32.const 4)) (i32.const 3072)))
    (local.set $at (call $append (local.get $at) (local.get $value)))
    (drop (call $append (local.get $at) (i32.const 3200)))
    (i32.store offset=8 (local.get $ctx) (local.get $out)))

  (func (export "eval") (param $ctx i32) (result i32)
    __EVAL__
    (i32.const 0))
)
