#!/usr/bin/env bash
#
# build.sh - build, format and test helper for chatcluster.
#
# Usage: ./build.sh <command> [args...]
#
#   build           go build -o bin/ ./cmd/...
#   test [ARGS...]  full test suite: starts private MariaDB and Redis
#                   instances, then runs gofmt, go vet and go test -race,
#                   and each micro-benchmark once
#                   (ARGS are passed through to go test, e.g. -run X)
#   fmt             gofmt -w .
#   cluster up [N]  start a local cluster that outlives this script: private
#                   MariaDB, Redis, N chatserver nodes (default 2) and nginx
#                   in front of them, state in ${CHAT_CLUSTER_DIR:-.cluster};
#                   prints nginx's HOST:PORT (the client address) last
#   cluster down    stop that cluster again
#   cluster status  list its processes (NAME PID ADDRESS running|dead)
#   cluster restart NODE
#                   stop one node (SIGTERM) if it runs, and start it again
#                   on its address under the same node id
#   help            show this help
#
# The service helpers (start_mariadb, start_redis, stop_all) never touch the
# system services or their default ports: every instance lives in a private
# state directory, listens on 127.0.0.1 on a free random port, and is stopped
# again by an EXIT trap (except those of "cluster up", which are recorded in
# the cluster state directory and stopped by "cluster down").

set -euo pipefail

# Always operate from the repository root (the directory holding this script);
# remember the caller's directory for relative paths given by the user.
CALLER_PWD="$PWD"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO_ROOT"

# Packages providing the services the test suite needs.
APT_PACKAGES=(redis-server mariadb-server nginx libnginx-mod-stream)

# Dynamic module file shipped by Debian's libnginx-mod-stream.
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

# Port range used for private service instances: free_port keeps below
# the kernel's ephemeral range (ip_local_port_range) when that leaves at
# least 1,000 ports, so that no client connection can hold the port it
# picks (after a benchmark run, tens of thousands of them wait in TIME_WAIT).
PORT_MIN=20000
PORT_MAX=60000

# Seconds to wait for a service to come up, and for one to shut down.
START_TIMEOUT=60
STOP_TIMEOUT=30

# Bookkeeping for everything this script started.
STATE_DIR=""          # temp dir holding data, sockets, logs and pid files
STARTED_PIDS=()       # pids of started services, in start order
STARTED_NAMES=()      # matching human readable names
ALLOCATED_PORTS=()    # ports handed out by free_port in this run
STEP_PID=""           # pid (== process group id) of the running test step
FREE_PORT=""          # result of free_port (not a subshell, so it can record)
SPAWNED_PID=""        # result of spawn

# Set by the start_* functions.
MARIADB_PID=""
MARIADB_PORT=""
MARIADB_SOCKET=""
REDIS_PID=""
REDIS_PORT=""

# ---------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------

log() {
	printf '==> %s\n' "$*" >&2
}

warn() {
	printf 'WARNING: %s\n' "$*" >&2
}

die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

# banner TEXT: a clearly visible header for each test step.
banner() {
	printf '\n' >&2
	printf '==================================================================\n' >&2
	printf '== %s\n' "$*" >&2
	printf '==================================================================\n' >&2
}

usage() {
	cat <<'EOF'
Usage: ./build.sh <command> [args...]

Commands:
  build           build all binaries under cmd/ into bin/
  test [ARGS...]  run the full test suite against private MariaDB and Redis
                  instances (gofmt check, go vet, go test -race, each
                  micro-benchmark once); ARGS are passed to go test, e.g.
                  ./build.sh test -run TestFoo ./store/ (then only that)
  fmt             format all Go sources in place (gofmt -w .)
  cluster up [N]  start a local cluster in the background: private MariaDB
                  and Redis, N chatserver nodes (default 2) and nginx in
                  front of them, all on free 127.0.0.1 ports; installs
                  missing Debian packages with apt-get. Progress goes to
                  stderr; the last stdout line is the address clients use
                  (nginx's HOST:PORT). Fails if a cluster already runs.
                  Starts empty: what an earlier cluster left in the state
                  directory (its database, logs) is deleted.
  cluster down    stop the cluster (nodes, nginx, Redis, MariaDB) and wait
                  for every process to exit; fine when none runs. The
                  data stays until the next "cluster up".
  cluster status  one line per process: NAME PID ADDRESS running|dead;
                  exit 0 when all run, 1 otherwise, 3 when there is none
  cluster restart NODE
                  stop node NODE (e.g. node1) with SIGTERM if it runs,
                  and start it again on its address under the same node
                  id, with the environment of this command (CHAT_*);
                  after a kill -9 of it, this brings it back

  The cluster lives in the state directory $CHAT_CLUSTER_DIR (default:
  .cluster in the repository): pids/, addr/, bin/chatserver and the logs
  (nodeN.log, mysql.err, redis.log, nginx/error.log).
EOF
}

# ---------------------------------------------------------------------------
# Generic helpers
# ---------------------------------------------------------------------------

# first_cmd NAME...: print the path of the first NAME found in PATH (or in
# the sbin directories, which are not always in a non-root PATH).
first_cmd() {
	local name path
	for name in "$@"; do
		if path="$(command -v "$name" 2>/dev/null)"; then
			printf '%s\n' "$path"
			return 0
		fi
		for path in "/usr/sbin/$name" "/sbin/$name" "/usr/local/sbin/$name"; do
			if [[ -x "$path" ]]; then
				printf '%s\n' "$path"
				return 0
			fi
		done
	done
	return 1
}

# as_root CMD...: run CMD as root, through sudo when not already root.
as_root() {
	if [[ "$(id -u)" -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root privileges (or sudo) to run: $*"
	fi
}

# raise_nofile: raise the soft open-files limit to the hard limit; the race
# detector, MariaDB and Redis all like many file descriptors.
raise_nofile() {
	local hard
	hard="$(ulimit -Hn)"
	if ! ulimit -Sn "$hard" 2>/dev/null; then
		warn "could not raise open files limit to $hard (soft limit stays $(ulimit -Sn))"
	fi
	log "open files limit: $(ulimit -Sn)"
}

# nginx_has_stream: true when nginx can proxy TCP streams, i.e. the dynamic
# stream module is installed or nginx was built with the module compiled in
# (Debian's "nginx -V" lists --with-stream=dynamic even when the module
# package is missing, so only a static --with-stream counts).
nginx_has_stream() {
	[[ -f "$NGINX_STREAM_MODULE" ]] && return 0
	local nginx
	nginx="$(first_cmd nginx)" || return 1
	"$nginx" -V 2>&1 | grep -Eq -- '--with-stream([[:space:]]|$)'
}

# packages_present: true when every tool the test suite needs is installed.
packages_present() {
	first_cmd redis-server >/dev/null &&
		first_cmd redis-cli >/dev/null &&
		first_cmd mariadbd mysqld >/dev/null &&
		first_cmd mariadb-install-db mysql_install_db >/dev/null &&
		first_cmd mariadb-admin mysqladmin >/dev/null &&
		first_cmd mariadb mysql >/dev/null &&
		first_cmd nginx >/dev/null &&
		nginx_has_stream
}

# ensure_packages: install the service packages with apt when any is missing.
# The lock timeout makes apt wait for a concurrently running apt/dpkg.
ensure_packages() {
	if packages_present; then
		log "required packages present"
		return 0
	fi
	log "installing missing packages: ${APT_PACKAGES[*]}"
	as_root apt-get -o DPkg::Lock::Timeout=600 update
	as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get -o DPkg::Lock::Timeout=600 install -y "${APT_PACKAGES[@]}"
	packages_present || die "required packages still missing after apt-get install"
}

# local_ports [listen]: print the local port of every TCP socket, one per
# line, whatever its state (a port that a closed client connection holds in
# TIME_WAIT cannot be listened on either: the client did not set
# SO_REUSEADDR); with "listen", of listening sockets only. Uses ss when
# available, otherwise parses /proc/net/tcp{,6} (hex ports, state 0A ==
# LISTEN).
local_ports() {
	local only="${1:-}"
	if command -v ss >/dev/null 2>&1; then
		if [[ "$only" == listen ]]; then ss -Hltn; else ss -Htan; fi |
			awk '{ n = split($4, a, ":"); print a[n] }'
	else
		local f h
		for f in /proc/net/tcp /proc/net/tcp6; do
			[[ -r "$f" ]] || continue
			# (hex to decimal in bash: mawk, Debian's default awk, has no strtonum)
			awk -v only="$only" 'NR > 1 && (only != "listen" || $4 == "0A") { split($2, a, ":"); print a[2] }' "$f" |
				while read -r h; do echo "$((16#$h))"; done
		done
	fi
}

# port_range: print the range free_port picks from: the part of
# [PORT_MIN, PORT_MAX] below the kernel's ephemeral range, or else above
# it, when that part has 1,000 ports or more; the whole otherwise.
port_range() {
	local elo="" ehi=""
	read -r elo ehi 2>/dev/null </proc/sys/net/ipv4/ip_local_port_range || true
	if [[ "$elo" =~ ^[0-9]+$ && "$ehi" =~ ^[0-9]+$ ]]; then
		if ((elo - 1 <= PORT_MAX && elo - 1 - PORT_MIN >= 1000)); then
			printf '%s %s\n' "$PORT_MIN" "$((elo - 1))"
			return
		fi
		if ((ehi + 1 >= PORT_MIN && PORT_MAX - (ehi + 1) >= 1000)); then
			printf '%s %s\n' "$((ehi + 1))" "$PORT_MAX"
			return
		fi
	fi
	printf '%s %s\n' "$PORT_MIN" "$PORT_MAX"
}

# free_port: set FREE_PORT to a random TCP port of port_range that no socket
# uses and that this script has not handed out before (it sets a variable
# instead of printing, because a $(...) subshell could not record the
# port). There is an unavoidable race with other processes; the start_*
# functions retry with a new port when the bind fails.
free_port() {
	local used port tries lo hi
	read -r lo hi < <(port_range)
	used=" $(local_ports | sort -u | tr '\n' ' ') ${ALLOCATED_PORTS[*]:-} "
	for ((tries = 0; tries < 1000; tries++)); do
		port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
		if [[ "$used" != *" $port "* ]]; then
			ALLOCATED_PORTS+=("$port")
			FREE_PORT="$port"
			return 0
		fi
	done
	die "no free port found in $lo-$hi"
}

# pid_alive PID: true while PID exists and is not a zombie.
pid_alive() {
	local state
	[[ -r "/proc/$1/stat" ]] || return 1
	# The state is the field after the parenthesised command name.
	state="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
	[[ -n "$state" && "$state" != "Z" ]]
}

# spawn OUTFILE CMD...: start CMD in the background, in its own process group
# (job control on), with stdin from /dev/null and output appended to OUTFILE;
# sets SPAWNED_PID. Its own process group keeps a terminal Ctrl-C away from
# the service, so that the EXIT trap shuts things down in order (test step
# first, then the services), and with job control on bash does not set
# SIGINT to "ignored" in the child as it does for plain background commands.
spawn() {
	local out="$1"
	shift
	set -m
	"$@" </dev/null >>"$out" 2>&1 &
	SPAWNED_PID=$!
	set +m
}

# register_pid NAME PID: remember a started service so stop_all stops it.
register_pid() {
	STARTED_NAMES+=("$1")
	STARTED_PIDS+=("$2")
}

# unregister_last: forget the most recently registered service (after it
# failed to start and was stopped), so its pid is never signalled again.
unregister_last() {
	local n=$((${#STARTED_PIDS[@]} - 1))
	if ((n >= 0)); then
		unset "STARTED_PIDS[n]" "STARTED_NAMES[n]"
	fi
}

# stop_pid NAME PID [SIGNAL]: stop a process, or with a negative PID a whole
# process group (whose leader is -PID): send SIGNAL (default TERM), wait up to
# STOP_TIMEOUT seconds for the (leader) process to exit, then SIGKILL what is
# left (for a group: any member still running); finally reap it.
stop_pid() {
	local name="$1" pid="$2" sig="${3:-TERM}" target i
	target="${pid#-}"
	if pid_alive "$target"; then
		log "stopping $name (pid $target)"
		kill "-$sig" -- "$pid" 2>/dev/null || true
		for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
			pid_alive "$target" || break
			sleep 0.1
		done
		if pid_alive "$target"; then
			warn "$name (pid $target) did not exit after ${STOP_TIMEOUT}s, killing it"
			kill -KILL -- "$pid" 2>/dev/null || true
		fi
	fi
	if [[ "$pid" == -* ]]; then
		# Members of the group may outlive its leader.
		kill -KILL -- "$pid" 2>/dev/null || true
	fi
	# Reap our child; this fails harmlessly for processes we did not fork.
	wait "$target" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------

# start_mariadb DIR: initialise a fresh MariaDB data directory in DIR/mysql
# and start a private server on 127.0.0.1:<free port> with its socket at
# DIR/mysql.sock. Creates database chat_test and user chat/chat (all
# privileges, since tests create their own databases). Sets MARIADB_PID,
# MARIADB_PORT and MARIADB_SOCKET.
start_mariadb() {
	local dir="$1"
	local mariadbd install_db admin client
	local datadir="$dir/mysql" errlog="$dir/mysql.err"
	local sock="$dir/mysql.sock" pidfile="$dir/mysql.pid"
	local user_args=() attempt port pid i up

	mariadbd="$(first_cmd mariadbd mysqld)" || die "mariadbd not found"
	install_db="$(first_cmd mariadb-install-db mysql_install_db)" || die "mariadb-install-db not found"
	admin="$(first_cmd mariadb-admin mysqladmin)" || die "mariadb-admin not found"
	client="$(first_cmd mariadb mysql)" || die "mariadb client not found"

	# mariadbd refuses to run as root unless told to explicitly.
	if [[ "$(id -u)" -eq 0 ]]; then
		user_args=(--user=root)
	fi

	log "initialising MariaDB data directory $datadir"
	mkdir -p "$datadir"
	if ! "$install_db" --no-defaults --datadir="$datadir" "${user_args[@]}" \
		--auth-root-authentication-method=normal --skip-test-db \
		--skip-name-resolve >"$dir/mysql-install.log" 2>&1; then
		cat "$dir/mysql-install.log" >&2
		die "mariadb-install-db failed"
	fi

	for ((attempt = 1; attempt <= 3; attempt++)); do
		free_port
		port="$FREE_PORT"
		log "starting MariaDB on 127.0.0.1:$port"
		: >"$errlog"
		# --no-defaults keeps /etc/mysql out of the picture, so the server
		# charset is set explicitly (the compiled-in default is latin1).
		# Durability is irrelevant for a throwaway test instance, so skip the
		# doublewrite buffer and per-commit log flushes to speed tests up.
		spawn "$errlog" "$mariadbd" --no-defaults \
			--datadir="$datadir" \
			--socket="$sock" \
			--port="$port" \
			--bind-address=127.0.0.1 \
			--pid-file="$pidfile" \
			"${user_args[@]}" \
			--skip-name-resolve \
			--innodb-buffer-pool-size=256M \
			--innodb-doublewrite=0 \
			--innodb-flush-log-at-trx-commit=2 \
			--max-connections=500 \
			--character-set-server=utf8mb4 \
			--collation-server=utf8mb4_unicode_ci \
			--log-error="$errlog"
		pid="$SPAWNED_PID"
		register_pid mariadbd "$pid"

		up=0
		for ((i = 0; i < START_TIMEOUT * 10; i++)); do
			if "$admin" --no-defaults -S "$sock" -uroot ping >/dev/null 2>&1; then
				up=1
				break
			fi
			pid_alive "$pid" || break
			sleep 0.1
		done
		if ((up == 1)); then
			break
		fi
		stop_pid mariadbd "$pid"
		unregister_last
		if ((attempt < 3)) && grep -q 'already in use' "$errlog"; then
			warn "port $port was taken, retrying with another port"
			continue
		fi
		printf -- '----- %s -----\n' "$errlog" >&2
		cat "$errlog" >&2
		die "MariaDB failed to start (log above)"
	done

	# Create the test database and the password-authenticated test user
	# (over the socket as root, who has no password in this instance).
	"$client" --no-defaults -S "$sock" -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS chat_test CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'chat'@'127.0.0.1' IDENTIFIED BY 'chat';
CREATE USER IF NOT EXISTS 'chat'@'localhost' IDENTIFIED BY 'chat';
GRANT ALL PRIVILEGES ON *.* TO 'chat'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'chat'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL

	MARIADB_PID="$pid"
	MARIADB_PORT="$port"
	MARIADB_SOCKET="$sock"
	log "MariaDB ready on 127.0.0.1:$port (pid $pid)"
}

# start_redis DIR: start a private, non-persistent Redis server on
# 127.0.0.1:<free port> with its working directory in DIR/redis and its log
# in DIR/redis.log. Sets REDIS_PID and REDIS_PORT.
start_redis() {
	local dir="$1"
	local server cli workdir="$dir/redis" logfile="$dir/redis.log"
	local attempt port pid i up

	server="$(first_cmd redis-server)" || die "redis-server not found"
	cli="$(first_cmd redis-cli)" || die "redis-cli not found"
	mkdir -p "$workdir"

	for ((attempt = 1; attempt <= 3; attempt++)); do
		free_port
		port="$FREE_PORT"
		log "starting Redis on 127.0.0.1:$port"
		: >"$logfile"
		: >"$dir/redis.out"
		spawn "$dir/redis.out" "$server" --port "$port" --bind 127.0.0.1 \
			--save '' --appendonly no \
			--dir "$workdir" --daemonize no \
			--logfile "$logfile"
		pid="$SPAWNED_PID"
		register_pid redis-server "$pid"
		printf '%s\n' "$pid" >"$dir/redis.pid"

		up=0
		for ((i = 0; i < START_TIMEOUT * 10; i++)); do
			if [[ "$("$cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == "PONG" ]]; then
				up=1
				break
			fi
			pid_alive "$pid" || break
			sleep 0.1
		done
		if ((up == 1)); then
			break
		fi
		stop_pid redis-server "$pid"
		unregister_last
		if ((attempt < 3)) && grep -qs 'already in use' "$logfile" "$dir/redis.out"; then
			warn "port $port was taken, retrying with another port"
			continue
		fi
		printf -- '----- %s -----\n' "$logfile" >&2
		cat "$logfile" >&2
		cat "$dir/redis.out" >&2
		die "Redis failed to start (log above)"
	done

	REDIS_PID="$pid"
	REDIS_PORT="$port"
	log "Redis ready on 127.0.0.1:$port (pid $pid)"
}

# print_services: summary of the running private services.
print_services() {
	log "MariaDB: 127.0.0.1:${MARIADB_PORT:-?} socket ${MARIADB_SOCKET:-?} pid ${MARIADB_PID:-?}"
	log "Redis:   127.0.0.1:${REDIS_PORT:-?} pid ${REDIS_PID:-?}"
}

# stop_all: stop the running test step (its whole process group) and every
# service started by this script, newest first.
stop_all() {
	local i
	if [[ -n "$STEP_PID" ]]; then
		# Interrupt go test gracefully first so it reports what was running.
		stop_pid "test step" "-$STEP_PID" INT
		STEP_PID=""
	fi
	for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${STARTED_NAMES[i]}" "${STARTED_PIDS[i]}"
	done
	STARTED_PIDS=()
	STARTED_NAMES=()
}

# cleanup: EXIT trap; stops everything and removes the state directory while
# preserving the script's exit status.
cleanup() {
	local rc=$?
	# Do not let a second Ctrl-C or a failing command abort the cleanup.
	trap '' INT TERM HUP
	set +e
	stop_all
	if [[ -n "$STATE_DIR" && -d "$STATE_DIR" ]]; then
		rm -rf -- "$STATE_DIR"
	fi
	exit "$rc"
}

# on_signal NAME CODE: turn a signal into a normal exit (which runs cleanup).
on_signal() {
	warn "caught SIG$1, shutting down"
	exit "$2"
}

install_traps() {
	trap cleanup EXIT
	trap 'on_signal INT 130' INT
	trap 'on_signal TERM 143' TERM
	trap 'on_signal HUP 129' HUP
}

# run_step CMD...: run a test step in its own process group and wait for it.
# Waiting on a background job (instead of running it in the foreground)
# lets the signal traps fire immediately, and the separate process group
# lets stop_all interrupt go test together with the test binaries it runs.
# (Tests get no stdin: a background job reading the terminal would stop.)
run_step() {
	local rc=0
	set -m
	"$@" </dev/null &
	STEP_PID=$!
	set +m
	wait "$STEP_PID" || rc=$?
	STEP_PID=""
	return "$rc"
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

cmd_build() {
	mkdir -p bin
	go build -o bin/ ./cmd/...
}

cmd_fmt() {
	gofmt -w .
}

# has_package_args ARGS...: true when the go test arguments name packages
# (".", "./x", "../x" or import paths of this module); otherwise cmd_test
# appends ./... so that e.g. "test -run TestFoo" still covers every package.
has_package_args() {
	local module arg
	module="$(go list -m 2>/dev/null || true)"
	for arg in "$@"; do
		case "$arg" in
		. | ./* | ../*) return 0 ;;
		esac
		if [[ -n "$module" && ( "$arg" == "$module" || "$arg" == "$module/"* ) ]]; then
			return 0
		fi
	done
	return 1
}

# cmd_test [ARGS...]: set up services, then gofmt check, go vet, go test.
cmd_test() {
	local start_time unformatted test_args

	banner "Preparing test environment"
	raise_nofile
	ensure_packages

	install_traps
	STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/chatcluster-test.XXXXXX")"
	log "state directory: $STATE_DIR"

	start_time=$SECONDS
	start_mariadb "$STATE_DIR"
	start_redis "$STATE_DIR"
	log "services started in $((SECONDS - start_time))s"
	print_services

	export CHAT_TEST_MYSQL_DSN="chat:chat@tcp(127.0.0.1:$MARIADB_PORT)/chat_test"
	export CHAT_TEST_REDIS_ADDR="127.0.0.1:$REDIS_PORT"
	CHAT_TEST_REDIS_SERVER="$(first_cmd redis-server)"
	export CHAT_TEST_REDIS_SERVER
	CHAT_TEST_MARIADBD="$(first_cmd mariadbd mysqld)"
	export CHAT_TEST_MARIADBD
	CHAT_TEST_NGINX="$(first_cmd nginx)"
	export CHAT_TEST_NGINX
	if [[ -f "$NGINX_STREAM_MODULE" ]]; then
		export CHAT_TEST_NGINX_STREAM_MODULE="$NGINX_STREAM_MODULE"
	fi
	export CHAT_REQUIRE_SERVICES=1
	# The cluster tests' checker appends its counts here; printed at the end.
	export CHAT_TEST_REPORT="$STATE_DIR/checker-report.txt"
	: >"$CHAT_TEST_REPORT"
	env | grep -E '^CHAT_' | sort >&2

	banner "gofmt -l ."
	unformatted="$(gofmt -l .)"
	if [[ -n "$unformatted" ]]; then
		printf '%s\n' "$unformatted" >&2
		die "the files above are not gofmt-formatted (run ./build.sh fmt)"
	fi

	banner "go vet ./..."
	run_step go vet ./...

	test_args=(-race -count=1 -timeout 20m "$@")
	if ! has_package_args "$@"; then
		test_args+=(./...)
	fi
	banner "go test ${test_args[*]}"
	run_step go test "${test_args[@]}"

	# The store's SQLite tests once more on the pure-Go SQLite that builds
	# without cgo use (store/sqlite_purego.go); -race needs cgo, so without
	# it. Its MySQL tests ran above and do not touch SQLite code: without
	# the MariaDB address they skip here.
	if ! has_package_args "$@"; then
		banner "CGO_ENABLED=0 go test -count=1 ./store/ (pure-Go SQLite)"
		run_step env -u CHAT_TEST_MYSQL_DSN -u CHAT_REQUIRE_SERVICES CGO_ENABLED=0 go test -count=1 -timeout 10m ./store/
	fi

	# The packages' micro-benchmarks, one iteration each, so that they
	# keep working and their own checks run (~6 s). cmd/chatbench's
	# in-process ones are left out: chatbench's own tests already run
	# that path end to end, against real servers.
	if ! has_package_args "$@"; then
		banner "go test -run '^\$' -bench . -benchtime 1x (micro-benchmarks, once)"
		run_step go test -count=1 -run '^$' -bench . -benchtime 1x -timeout 10m ./codec/ ./service/ ./store/ ./server/
	fi

	if [[ -s "$CHAT_TEST_REPORT" ]]; then
		banner "cluster checker: acknowledged vs delivered, per test"
		cat "$CHAT_TEST_REPORT"
	fi
	banner "All tests passed"
}

# ---------------------------------------------------------------------------
# Cluster: a long-lived local cluster (MariaDB, Redis, N nodes, nginx)
# ---------------------------------------------------------------------------
#
# Unlike the test services, the cluster processes outlive build.sh: "up"
# records each one in the state directory and "down" stops them from there.
# Layout of the state directory:
#   .chatcluster      marker: the directory belongs to build.sh cluster
#   procs             process names, in start order
#   pids/NAME.pid     pid of NAME
#   pids/NAME.start   its start time (/proc/PID/stat field 22), so that a
#                     recycled pid is never mistaken for (or signalled as) it
#   addr/NAME         the HOST:PORT NAME listens on
#   bin/chatserver    the node binary; nodeN.log the node logs; mysql/,
#                     mysql.err, redis/, redis.log, nginx/ the services' files

CLUSTER_DIR=""          # absolute state directory, set by cluster_set_dir
CLUSTER_TEMPLATE="deploy/nginx/chatcluster-stream.conf"
CLUSTER_MARKER=".chatcluster"

# cluster_set_dir: set CLUSTER_DIR from CHAT_CLUSTER_DIR (relative to the
# caller's working directory) or default to .cluster in the repository.
cluster_set_dir() {
	local dir="${CHAT_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
	if [[ "$dir" != /* ]]; then
		dir="$CALLER_PWD/$dir"
	fi
	CLUSTER_DIR="${dir%/}"
}

# proc_starttime PID: print the start time of PID in clock ticks since boot.
proc_starttime() {
	local rest
	rest="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1
	[[ -n "$rest" ]] || return 1
	cut -d' ' -f20 <<<"$rest"
}

# cluster_record NAME PID ADDR: record a started cluster process.
cluster_record() {
	local name="$1" pid="$2" addr="$3" start
	start="$(proc_starttime "$pid")" || start=""
	mkdir -p "$CLUSTER_DIR/pids" "$CLUSTER_DIR/addr"
	printf '%s\n' "$pid" >"$CLUSTER_DIR/pids/$name.pid"
	printf '%s\n' "$start" >"$CLUSTER_DIR/pids/$name.start"
	printf '%s\n' "$addr" >"$CLUSTER_DIR/addr/$name"
	if ! grep -qsx -- "$name" "$CLUSTER_DIR/procs"; then
		printf '%s\n' "$name" >>"$CLUSTER_DIR/procs"
	fi
}

# cluster_forget NAME: remove the records of NAME.
cluster_forget() {
	rm -f -- "$CLUSTER_DIR/pids/$1.pid" "$CLUSTER_DIR/pids/$1.start" "$CLUSTER_DIR/addr/$1"
}

# cluster_names: print the recorded process names in start order (names
# whose pid file is gone are skipped).
cluster_names() {
	local name
	[[ -f "$CLUSTER_DIR/procs" ]] || return 0
	while IFS= read -r name; do
		[[ -n "$name" && -f "$CLUSTER_DIR/pids/$name.pid" ]] && printf '%s\n' "$name"
	done <"$CLUSTER_DIR/procs"
	return 0
}

# cluster_pid NAME: print the recorded pid of NAME.
cluster_pid() {
	local pid
	pid="$(cat "$CLUSTER_DIR/pids/$1.pid" 2>/dev/null)" || return 1
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	printf '%s\n' "$pid"
}

# cluster_addr NAME: print the recorded address of NAME (or "-").
cluster_addr() {
	local addr
	addr="$(cat "$CLUSTER_DIR/addr/$1" 2>/dev/null)" || addr=""
	printf '%s\n' "${addr:--}"
}

# cluster_alive NAME: true while the recorded process of NAME runs (the
# same process: its start time must match the recorded one).
cluster_alive() {
	local pid want got
	pid="$(cluster_pid "$1")" || return 1
	pid_alive "$pid" || return 1
	want="$(cat "$CLUSTER_DIR/pids/$1.start" 2>/dev/null)" || want=""
	[[ -z "$want" ]] && return 0
	got="$(proc_starttime "$pid")" || return 1
	[[ "$got" == "$want" ]]
}

# group_members PGID: print the pids of live (non-zombie) processes in the
# process group PGID.
group_members() {
	awk -v pg="$1" '
		FNR == 1 {
			line = $0
			sub(/^.*\) /, "", line)
			split(line, f, " ")
			if (f[3] == pg && f[1] != "Z") {
				n = split(FILENAME, p, "/")
				print p[n - 1]
			}
			nextfile
		}' /proc/[0-9]*/stat 2>/dev/null || true
}

# cluster_stop NAME...: stop the named cluster processes together: SIGTERM
# to each, wait up to STOP_TIMEOUT seconds for all to exit, SIGKILL what is
# left; then kill any leftovers in their process groups (e.g. nginx
# workers), and forget them.
cluster_stop() {
	local name pid i left members
	local -a names=() pids=()
	for name in "$@"; do
		if cluster_alive "$name"; then
			pid="$(cluster_pid "$name")"
			log "stopping $name (pid $pid)"
			kill -TERM -- "$pid" 2>/dev/null || true
			names+=("$name")
			pids+=("$pid")
		elif [[ -f "$CLUSTER_DIR/pids/$name.pid" ]]; then
			log "$name is not running"
		fi
	done
	for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
		left=0
		for pid in "${pids[@]}"; do
			pid_alive "$pid" && left=1
		done
		((left == 0)) && break
		sleep 0.1
	done
	for ((i = 0; i < ${#pids[@]}; i++)); do
		if pid_alive "${pids[i]}"; then
			warn "${names[i]} (pid ${pids[i]}) did not exit after ${STOP_TIMEOUT}s, killing it"
			kill -KILL -- "${pids[i]}" 2>/dev/null || true
		fi
	done
	for pid in "${pids[@]}"; do
		for ((i = 0; i < 50; i++)); do
			pid_alive "$pid" || break
			sleep 0.1
		done
		# Every cluster process leads its own process group (spawn);
		# while members remain the group id cannot be reused.
		members="$(group_members "$pid")"
		if [[ -n "$members" ]]; then
			warn "killing leftover processes of group $pid: $(tr '\n' ' ' <<<"$members")"
			kill -KILL -- "-$pid" 2>/dev/null || true
		fi
	done
	for name in "$@"; do
		cluster_forget "$name"
	done
}

# cluster_any_alive: true when any recorded cluster process runs.
cluster_any_alive() {
	local name
	while IFS= read -r name; do
		cluster_alive "$name" && return 0
	done < <(cluster_names)
	return 1
}

# wait_listen NAME PID PORT: wait until PID listens on PORT; fails when PID
# exits first or after START_TIMEOUT seconds.
wait_listen() {
	local name="$1" pid="$2" port="$3" i
	for ((i = 0; i < START_TIMEOUT * 10; i++)); do
		pid_alive "$pid" || return 1
		# (grep without -q reads all input: no SIGPIPE under pipefail)
		if local_ports listen | grep -x -- "$port" >/dev/null; then
			# Still ours (not another process that took the port)?
			pid_alive "$pid" && return 0
			return 1
		fi
		sleep 0.1
	done
	warn "$name (pid $pid) did not listen on 127.0.0.1:$port after ${START_TIMEOUT}s"
	return 1
}

# render_stream TEMPLATE LISTEN NODE...: print the stream block of TEMPLATE
# with the ##NODES## lines replaced by one server line per NODE address
# (options taken from the first ##NODES## line) and the address of the
# ##LISTEN## line replaced by LISTEN, its options kept - exactly as
# test/harness_test.go's renderStream does.
render_stream() {
	local tmpl="$1" listen="$2" line node emitted=0 have_listen=0
	local -a nodes=("${@:3}") fields
	while IFS= read -r line || [[ -n "$line" ]]; do
		line="${line%$'\r'}"
		if [[ "$line" == *'##NODES##' ]]; then
			((emitted == 1)) && continue
			emitted=1
			read -ra fields <<<"${line%'##NODES##'}"
			((${#fields[@]} >= 2)) || die "$tmpl: bad ##NODES## line: $line"
			for node in "${nodes[@]}"; do
				fields[1]="$node"
				printf '        %s\n' "${fields[*]}"
			done
		elif [[ "$line" == *'##LISTEN##' ]]; then
			have_listen=1
			read -ra fields <<<"${line%'##LISTEN##'}"
			((${#fields[@]} >= 2)) || die "$tmpl: bad ##LISTEN## line: $line"
			if [[ "${fields[1]}" == *';' ]]; then
				fields[1]="$listen;"
			else
				fields[1]="$listen"
			fi
			printf '        %s\n' "${fields[*]}"
		else
			printf '%s\n' "$line"
		fi
	done <"$tmpl"
	((emitted == 1)) || die "$tmpl has no line marked ##NODES##"
	((have_listen == 1)) || die "$tmpl has no line marked ##LISTEN##"
}

# cluster_start_node I DB REDIS [PORT]: start node I, on PORT if given
# (restart), else on a free port, retrying with another on a port clash.
# Records the node.
cluster_start_node() {
	local i="$1" db="$2" redis="$3" fixed="${4:-}" name="node$1" logfile attempt port pid
	logfile="$CLUSTER_DIR/$name.log"
	for ((attempt = 1; attempt <= 3; attempt++)); do
		if [[ -n "$fixed" ]]; then
			port="$fixed"
		else
			free_port
			port="$FREE_PORT"
		fi
		log "starting $name on 127.0.0.1:$port"
		spawn "$logfile" "$CLUSTER_DIR/bin/chatserver" \
			-listen "127.0.0.1:$port" -db "$db" -redis "$redis" -node-id "$name"
		pid="$SPAWNED_PID"
		register_pid "$name" "$pid"
		cluster_record "$name" "$pid" "127.0.0.1:$port"
		if wait_listen "$name" "$pid" "$port"; then
			log "$name ready on 127.0.0.1:$port (pid $pid)"
			return 0
		fi
		stop_pid "$name" "$pid"
		unregister_last
		cluster_forget "$name"
		if [[ -z "$fixed" ]] && ((attempt < 3)) && grep -qi 'address already in use' "$logfile"; then
			warn "port $port was taken, retrying with another port"
			continue
		fi
		break
	done
	printf -- '----- %s (tail) -----\n' "$logfile" >&2
	tail -n 40 "$logfile" >&2
	die "$name failed to start (log above)"
}

# cluster_start_nginx NODE...: render the stream template for the NODE
# addresses and run nginx in the foreground of its own prefix
# directory, in the background of this script. Records it; sets FREE_PORT
# to its port.
cluster_start_nginx() {
	local nginx prefix conf attempt port pid module
	nginx="$(first_cmd nginx)" || die "nginx not found"
	prefix="$CLUSTER_DIR/nginx"
	conf="$prefix/nginx.conf"
	mkdir -p "$prefix/logs"
	module="${CHAT_TEST_NGINX_STREAM_MODULE:-$NGINX_STREAM_MODULE}"
	for ((attempt = 1; attempt <= 3; attempt++)); do
		free_port
		port="$FREE_PORT"
		{
			if [[ -f "$module" ]]; then
				printf 'load_module %s;\n' "$module"
			fi
			printf 'daemon off;\nmaster_process on;\nworker_processes 1;\n'
			printf 'pid %s/nginx.pid;\nerror_log %s/error.log info;\n' "$prefix" "$prefix"
			printf 'events { worker_connections 16384; }\n'
			render_stream "$CLUSTER_TEMPLATE" "127.0.0.1:$port" "$@"
		} >"$conf.tmp"
		mv -f -- "$conf.tmp" "$conf"
		log "starting nginx on 127.0.0.1:$port (config $conf)"
		: >"$prefix/error.log"
		spawn "$prefix/stdout.log" "$nginx" -p "$prefix" -c "$conf" -e "$prefix/error.log"
		pid="$SPAWNED_PID"
		# A negative pid: on failure stop the whole group (master and workers).
		register_pid nginx "-$pid"
		cluster_record nginx "$pid" "127.0.0.1:$port"
		if wait_listen nginx "$pid" "$port"; then
			log "nginx ready on 127.0.0.1:$port (pid $pid)"
			FREE_PORT="$port"
			return 0
		fi
		stop_pid nginx "-$pid"
		unregister_last
		cluster_forget nginx
		if ((attempt < 3)) && grep -qsi 'address already in use' "$prefix/error.log" "$prefix/stdout.log"; then
			warn "port $port was taken, retrying with another port"
			continue
		fi
		break
	done
	printf -- '----- %s -----\n' "$prefix/error.log" >&2
	tail -n 40 "$prefix/error.log" "$prefix/stdout.log" >&2
	die "nginx failed to start (log above)"
}

# cluster_up_exit: EXIT trap of "cluster up": when up fails, stop whatever
# it started (the pids registered so far) and drop their records.
cluster_up_exit() {
	local rc=$? name
	trap '' INT TERM HUP
	set +e
	if ((rc != 0)); then
		warn "cluster up failed, stopping what it started"
		stop_all
		while IFS= read -r name; do
			cluster_forget "$name"
		done < <(cluster_names)
		rm -f -- "$CLUSTER_DIR/procs"
		warn "logs are kept in $CLUSTER_DIR"
	fi
	exit "$rc"
}

# cluster_prepare_dir: make CLUSTER_DIR an empty state directory, refusing
# when a cluster runs there and cleaning the state of a dead one.
cluster_prepare_dir() {
	local entries
	if [[ -d "$CLUSTER_DIR" ]]; then
		if cluster_any_alive; then
			die "a cluster is already running in $CLUSTER_DIR (see ./build.sh cluster status; stop it with ./build.sh cluster down)"
		fi
		if [[ -f "$CLUSTER_DIR/$CLUSTER_MARKER" ]]; then
			log "removing what an earlier cluster left in $CLUSTER_DIR (its database and logs)"
			# The marker proves the directory is ours: clear it entirely.
			find "$CLUSTER_DIR" -mindepth 1 -delete
		else
			entries="$(find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 -print -quit)"
			if [[ -n "$entries" ]]; then
				die "$CLUSTER_DIR exists, is not empty and is not a cluster state directory; remove it or set CHAT_CLUSTER_DIR"
			fi
		fi
	fi
	mkdir -p "$CLUSTER_DIR"
	: >"$CLUSTER_DIR/$CLUSTER_MARKER"
}

# cmd_cluster_up_run N: the work of "cluster up" (all output on stderr);
# sets FREE_PORT to nginx's port.
cmd_cluster_up_run() {
	local n="$1" i start_time db redis
	local -a nodes=()
	start_time=$SECONDS
	cluster_prepare_dir
	log "state directory: $CLUSTER_DIR"
	raise_nofile
	ensure_packages

	trap cluster_up_exit EXIT
	trap 'on_signal INT 130' INT
	trap 'on_signal TERM 143' TERM
	trap 'on_signal HUP 129' HUP

	log "building chatserver into $CLUSTER_DIR/bin/"
	mkdir -p "$CLUSTER_DIR/bin"
	go build -o "$CLUSTER_DIR/bin/" ./cmd/chatserver || die "go build ./cmd/chatserver failed"

	start_mariadb "$CLUSTER_DIR"
	cluster_record mariadb "$MARIADB_PID" "127.0.0.1:$MARIADB_PORT"
	"$(first_cmd mariadb mysql)" --no-defaults -S "$MARIADB_SOCKET" -uroot \
		-e 'CREATE DATABASE IF NOT EXISTS chat CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci' ||
		die "could not create database chat"

	start_redis "$CLUSTER_DIR"
	cluster_record redis "$REDIS_PID" "127.0.0.1:$REDIS_PORT"

	db="mysql:chat:chat@tcp(127.0.0.1:$MARIADB_PORT)/chat"
	redis="127.0.0.1:$REDIS_PORT"
	for ((i = 1; i <= n; i++)); do
		cluster_start_node "$i" "$db" "$redis"
		nodes+=("$(cluster_addr "node$i")")
	done

	cluster_start_nginx "${nodes[@]}"

	# Success: the processes now belong to the state directory, not to
	# this script's EXIT trap.
	STARTED_PIDS=()
	STARTED_NAMES=()
	trap - EXIT INT TERM HUP
	log "cluster of $n node(s) up in $((SECONDS - start_time))s; state in $CLUSTER_DIR"
	cmd_cluster_status >&2 || true
	log "clients connect to 127.0.0.1:$FREE_PORT; stop with ./build.sh cluster down"
}

# cmd_cluster_up [N]: start MariaDB, Redis, N nodes and nginx; print
# nginx's address alone on the last line of stdout.
cmd_cluster_up() {
	local n="${1:-2}"
	(($# <= 1)) || die "usage: ./build.sh cluster up [N]"
	if ! [[ "$n" =~ ^[0-9]+$ ]] || ((10#$n < 1 || 10#$n > 200)); then
		die "N must be a number of nodes between 1 and 200, not '$n'"
	fi
	n=$((10#$n))
	cluster_set_dir
	cmd_cluster_up_run "$n" >&2
	printf '127.0.0.1:%s\n' "$FREE_PORT"
}

# cmd_cluster_down: stop every recorded process (nodes, nginx, Redis,
# MariaDB, then anything else) and remove the records.
cmd_cluster_down() {
	local name start_time
	local -a all=() nodes=() rest=()
	(($# == 0)) || die "usage: ./build.sh cluster down"
	cluster_set_dir
	mapfile -t all < <(cluster_names)
	if ((${#all[@]} == 0)); then
		log "no cluster in $CLUSTER_DIR"
		return 0
	fi
	start_time=$SECONDS
	for name in "${all[@]}"; do
		case "$name" in
		node*) nodes+=("$name") ;;
		nginx | redis | mariadb) ;;
		*) rest+=("$name") ;;
		esac
	done
	((${#nodes[@]} == 0)) || cluster_stop "${nodes[@]}"
	for name in nginx redis mariadb; do
		if [[ -f "$CLUSTER_DIR/pids/$name.pid" ]]; then
			cluster_stop "$name"
		fi
	done
	((${#rest[@]} == 0)) || cluster_stop "${rest[@]}"
	rm -f -- "$CLUSTER_DIR/procs"
	log "cluster in $CLUSTER_DIR stopped in $((SECONDS - start_time))s"
}

# cmd_cluster_status: print NAME PID ADDRESS running|dead for every
# recorded process; exit 0 when all run, 1 otherwise, 3 without a cluster.
cmd_cluster_status() {
	local name pid state rc=0
	local -a all=()
	(($# == 0)) || die "usage: ./build.sh cluster status"
	cluster_set_dir
	mapfile -t all < <(cluster_names)
	if ((${#all[@]} == 0)); then
		log "no cluster in $CLUSTER_DIR"
		return 3
	fi
	for name in "${all[@]}"; do
		pid="$(cluster_pid "$name")" || pid="-"
		if cluster_alive "$name"; then
			state=running
		else
			state=dead
			rc=1
		fi
		printf '%-8s %-8s %-21s %s\n' "$name" "$pid" "$(cluster_addr "$name")" "$state"
	done
	return "$rc"
}

# cmd_cluster_restart NODE: stop NODE if it runs and start it again on its
# recorded address, as the same node id, against the cluster's MariaDB
# and Redis.
cmd_cluster_restart() {
	local name="${1:-}" addr db redis
	(($# == 1)) && [[ "$name" =~ ^node[0-9]+$ ]] || die "usage: ./build.sh cluster restart nodeN"
	cluster_set_dir
	addr="$(cluster_addr "$name")"
	[[ "$addr" != "-" ]] || die "no $name in $CLUSTER_DIR (see ./build.sh cluster status)"
	cluster_alive mariadb && cluster_alive redis || die "the cluster's MariaDB or Redis is not running: start it with ./build.sh cluster up"
	db="mysql:chat:chat@tcp($(cluster_addr mariadb))/chat"
	redis="$(cluster_addr redis)"
	cluster_stop "$name"
	cluster_start_node "${name#node}" "$db" "$redis" "${addr##*:}"
}

cmd_cluster() {
	local sub="${1:-}"
	if (($# > 0)); then
		shift
	fi
	case "$sub" in
	up) cmd_cluster_up "$@" ;;
	down) cmd_cluster_down "$@" ;;
	status) cmd_cluster_status "$@" ;;
	restart) cmd_cluster_restart "$@" ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main() {
	local cmd="${1:-help}"
	if (($# > 0)); then
		shift
	fi
	case "$cmd" in
	build) cmd_build "$@" ;;
	test) cmd_test "$@" ;;
	fmt) cmd_fmt "$@" ;;
	cluster) cmd_cluster "$@" ;;
	help | -h | --help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
