;; A hand-written module that speaks OPA's wasm ABI (1.2: the exports `opa build -t wasm`
;; emits and deputyd calls), for what no real policy can do: run forever (Rego always
;; terminates), or declare an older ABI. Values are kept as their JSON text: [length: i32][bytes].
;; The tests fill in:
;;   __MINOR__  the ABI minor version it declares
;;   __EVAL__   the body of `opa_eval`: `(i32.const 3300)` answers `[]` (undefined); a
;;              `(loop ...)` never ends.
(module
  (import "env" "memory" (memory 2))
  (global $heap (mut i32) (i32.const 65536))
  (global (export "opa_wasm_abi_version") i32 (i32.const 1))
  (global (export "opa_wasm_abi_minor_version") i32 (i32.const __MINOR__))
  (data (i32.const 1024) "\02\00\00\00{}")
  (data (i32.const 2048) "\1b\00\00\00{\"deputy/authz/decision\":0}")
  (data (i32.const 3300) "[]\00")

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

  (func $parse (export "opa_json_parse") (param $s i32) (param $n i32) (result i32)
    (local $v i32)
    (local.set $n (call $strlen (local.get $s) (local.get $n)))
    (local.set $v (call $malloc (i32.add (local.get $n) (i32.const 4))))
    (i32.store (local.get $v) (local.get $n))
    (memory.copy (i32.add (local.get $v) (i32.const 4)) (local.get $s) (local.get $n))
    (local.get $v))
  (func $dump (export "opa_json_dump") (param $v i32) (result i32)
    (local $n i32) (local $s i32)
    (local.set $n (i32.load (local.get $v)))
    (local.set $s (call $malloc (i32.add (local.get $n) (i32.const 1))))
    (memory.copy (local.get $s) (i32.add (local.get $v) (i32.const 4)) (local.get $n))
    (i32.store8 (i32.add (local.get $s) (local.get $n)) (i32.const 0))
    (local.get $s))

  (func (export "builtins") (result i32) (i32.const 1024))
  (func (export "entrypoints") (result i32) (i32.const 2048))

  (func (export "opa_value_parse") (param i32 i32) (result i32)
    (call $parse (local.get 0) (local.get 1)))
  (func (export "opa_value_dump") (param i32) (result i32) (call $dump (local.get 0)))

  (func (export "opa_eval") (param $reserved i32) (param $entrypoint i32) (param $data i32)
    (param $input i32) (param $len i32) (param $heap_ptr i32) (param $format i32) (result i32)
    (global.set $heap (local.get $heap_ptr))
    __EVAL__)
)
