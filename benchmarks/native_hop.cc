// The cheapest compiled gRPC hop: a byte-forwarding proxy with no routing, in C++.
//
// benchmarks/serving_latency.py --native-hop BINARY runs it beside the Python hops
// (grpc_hop_floor.py): what any compiled data plane in front of the model server (Envoy,
// or the router's assignment and label rewrite rewritten natively) could cost at best on
// this host. gRPC's callback API: one reactor per call, the backend call on a generic stub.
//
// Build (Debian: apt-get install libgrpc++-dev pkg-config):
//   g++ -O2 -std=c++17 benchmarks/native_hop.cc -o native_hop $(pkg-config --cflags --libs grpc++)
//   native_hop PORT BACKEND
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>

namespace {

class ForwardCall : public grpc::ServerGenericBidiReactor {
 public:
  ForwardCall(grpc::GenericCallbackServerContext* server_context, grpc::GenericStub* stub)
      : server_context_(server_context), stub_(stub) {
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "no request message"));
      return;
    }
    client_context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    stub_->UnaryCall(&client_context_, server_context_->method(), grpc::StubOptions(), &request_, &response_,
                     [this](grpc::Status status) {
                       if (!status.ok()) {
                         Finish(status);
                       } else {
                         StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
                       }
                     });
  }
  void OnDone() override { delete this; }

 private:
  grpc::GenericCallbackServerContext* server_context_;
  grpc::GenericStub* stub_;
  grpc::ClientContext client_context_;
  grpc::ByteBuffer request_, response_;
};

class Forwarder : public grpc::CallbackGenericService {
 public:
  explicit Forwarder(std::shared_ptr<grpc::Channel> channel) : stub_(channel) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new ForwardCall(context, &stub_);
  }

 private:
  grpc::GenericStub stub_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: native_hop PORT BACKEND\n";
    return 2;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  Forwarder forwarder(grpc::CreateCustomChannel(argv[2], grpc::InsecureChannelCredentials(), args));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(std::string("127.0.0.1:") + argv[1], grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(-1);
  builder.RegisterCallbackGenericService(&forwarder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return 1;
  std::cout << "native hop listening on port " << port << std::endl;
  server->Wait();
  return 0;
}
